#!/usr/bin/env bash
# Compile the JVM core of the Android demo and run its JUnit tests against export/golden/, with the machine's
# JDK and Debian's jars (junit4, hamcrest, libandroid-json-java = the org.json Android ships); no Gradle.
#   android_demo/core/test.sh                       # from anywhere in the repository
#   PROFILE_SAMPLE=out.json android_demo/core/test.sh   # also write a sample profile JSON (tests/apps reads it)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
jars=/usr/share/java
classpath_libs="${JUNIT_JAR:-$jars/junit4.jar}:${HAMCREST_JAR:-$jars/hamcrest-core.jar}:${ORG_JSON_JAR:-$jars/com.android.json.jar}"
for jar in ${classpath_libs//:/ }; do
  if [ ! -f "$jar" ]; then
    echo "error: $jar is missing; install it with: apt-get install -y junit4 libandroid-json-java" >&2
    exit 2
  fi
done
command -v javac >/dev/null || { echo "error: javac is missing; install a JDK 17 (apt-get install -y openjdk-17-jdk-headless)" >&2; exit 2; }

out="$here/build/plain"  # not build/classes: Gradle owns that when the app is built
rm -rf "$out"
mkdir -p "$out/main" "$out/test"
javac --release 11 -Xlint:all -Werror -d "$out/main" -cp "$classpath_libs" $(find "$here/src/main/java" -name '*.java')
javac --release 11 -d "$out/test" -cp "$out/main:$classpath_libs" $(find "$here/src/test/java" -name '*.java')
tests=$(cd "$here/src/test/java" && find . -name '*Test.java' | sed 's|^\./||; s|\.java$||; s|/|.|g' | sort)
java -Dalignkd.root="$root" -cp "$out/main:$out/test:$classpath_libs" org.junit.runner.JUnitCore $tests
if [ -n "${PROFILE_SAMPLE:-}" ]; then
  java -cp "$out/main:$out/test:$classpath_libs" org.alignkd.core.ProfileSample "$PROFILE_SAMPLE"
fi
