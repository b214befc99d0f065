plugins {
    id("com.android.application")
}

val executorchVersion: String by project

android {
    namespace = "org.alignkd.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "org.alignkd.demo"
        minSdk = 29  // ImageDecoder and MediaStore inserts without storage permissions
        targetSdk = 35
        versionCode = 1
        versionName = "0.1"
        ndk { abiFilters += listOf("arm64-v8a") }  // ExecuTorch's AAR ships arm64 kernels for phones
        buildConfigField("String", "EXECUTORCH_VERSION", "\"$executorchVersion\"")
    }
    buildFeatures { buildConfig = true }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_11
        targetCompatibility = JavaVersion.VERSION_11
    }
    buildTypes {
        release {
            isMinifyEnabled = false
        }
    }
}

dependencies {
    implementation(project(":core"))
    implementation("org.pytorch:executorch-android:$executorchVersion")
    // ExecuTorch's Java layer is built on fbjni (HybridData) and loads its .so through SoLoader.
    implementation("com.facebook.fbjni:fbjni:0.5.1")
    implementation("com.facebook.soloader:soloader:0.10.5")
}
