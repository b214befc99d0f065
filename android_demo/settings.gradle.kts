// The alignkd Android demo: :core is plain Java (tested here with android_demo/core/test.sh), :app the
// Activity on top of it and ExecuTorch's LlmModule.
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}
dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}
rootProject.name = "alignkd-android-demo"
include(":core", ":app")
