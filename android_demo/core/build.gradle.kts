// Plain Java, no Android: the same sources android_demo/core/test.sh compiles with javac.
plugins {
    `java-library`
}

java {
    toolchain { languageVersion.set(JavaLanguageVersion.of(17)) }
}

tasks.withType<JavaCompile>().configureEach {
    options.release.set(11)  // what the Android app module compiles against
}

dependencies {
    // org.json is part of Android; on the JVM the tests use the same implementation, Android's own, from Maven.
    compileOnly("com.vaadin.external.google:android-json:0.0.20131108.vaadin1")
    testImplementation("com.vaadin.external.google:android-json:0.0.20131108.vaadin1")
    testImplementation("junit:junit:4.13.2")
}

tasks.test {
    // The tests read export/golden/ and the tiny fixture's tokenizer from the repository.
    systemProperty("alignkd.root", rootDir.parentFile.absolutePath)
    exclude("**/Golden*", "**/ProfileSample*")
}
