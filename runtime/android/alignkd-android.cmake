# CMake toolchain for an arm64-v8a alignkd-runner: the Android NDK's own toolchain file, plus where the
# cross-built dependencies live. Steps and the commands that make those dependencies: runtime/android/README.md.
#
#   export ANDROID_NDK=/path/to/android-ndk-r27c  ALIGNKD_ANDROID_DEPS=$HOME/alignkd-android/deps
#   cmake -S runtime -B build/android -G Ninja -DCMAKE_BUILD_TYPE=Release \
#         -DCMAKE_TOOLCHAIN_FILE=runtime/android/alignkd-android.cmake \
#         -DALIGNKD_EXECUTORCH_PREFIX=$HOME/alignkd-android/executorch -DALIGNKD_BUILD_TESTS=OFF
#   cmake --build build/android -j
#
# Settings come from environment variables, not -D options, because CMake reads a toolchain file again for
# every try_compile project, which sees the environment but not the first project's cache.

if(NOT DEFINED ENV{ANDROID_NDK} OR NOT EXISTS "$ENV{ANDROID_NDK}/build/cmake/android.toolchain.cmake")
  message(FATAL_ERROR "set ANDROID_NDK to an Android NDK (r26 or newer) folder; "
                      "it must hold build/cmake/android.toolchain.cmake")
endif()
if(NOT DEFINED ENV{ALIGNKD_ANDROID_DEPS})
  message(FATAL_ERROR "set ALIGNKD_ANDROID_DEPS to the prefix where SentencePiece, OpenSSL, nlohmann_json and "
                      "stb were installed for Android (runtime/android/README.md, step 2)")
endif()

set(ANDROID_ABI arm64-v8a CACHE STRING "Android ABI (phones: arm64-v8a)")
set(ANDROID_PLATFORM android-28 CACHE STRING "Lowest Android API level the runner supports")
set(ANDROID_STL c++_static CACHE STRING "libc++ linked in: one self-contained binary to push")
include("$ENV{ANDROID_NDK}/build/cmake/android.toolchain.cmake")

# The NDK's toolchain searches libraries, headers and packages only below CMAKE_FIND_ROOT_PATH (mode ONLY):
# add the dependency prefix there, and point pkg-config (SentencePiece) at its .pc files instead of the host's.
list(APPEND CMAKE_FIND_ROOT_PATH "$ENV{ALIGNKD_ANDROID_DEPS}")
set(ENV{PKG_CONFIG_LIBDIR} "$ENV{ALIGNKD_ANDROID_DEPS}/lib/pkgconfig")
set(ENV{PKG_CONFIG_SYSROOT_DIR} "")
set(OPENSSL_ROOT_DIR "$ENV{ALIGNKD_ANDROID_DEPS}")
set(OPENSSL_USE_STATIC_LIBS TRUE)
