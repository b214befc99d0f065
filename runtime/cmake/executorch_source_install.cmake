# ExecuTorch from a source build's install prefix (ALIGNKD_EXECUTORCH_PREFIX), for cross builds (Android, iOS).
#
# The pip wheel's package defines namespaced targets (executorch::runtime, executorch::kernels_optimized, ...);
# a source build's installed package exposes the build's own bare names instead (executorch, executorch_core,
# optimized_native_cpu_ops_lib, quantized_ops_lib, xnnpack_backend, extension_threadpool, etdump). The runner is
# written against the wheel's names, so this file finds the source package and defines those names on top of it.
# Static kernel and delegate libraries register their operators from static constructors that nothing else
# references, so they are linked whole-archive (the wheel's shared libraries need no such care).
#
# Not exercised on the project's machine (no Android NDK, no ExecuTorch source build): see runtime/android/README.md.

# Cross toolchains (the NDK's android.toolchain.cmake) search packages only below CMAKE_FIND_ROOT_PATH;
# the prefix is on the build machine, so it is searched as given.
find_package(executorch CONFIG REQUIRED PATHS "${ALIGNKD_EXECUTORCH_PREFIX}" NO_DEFAULT_PATH CMAKE_FIND_ROOT_PATH_BOTH)

if(NOT DEFINED EXECUTORCH_BUILD_VERSION OR EXECUTORCH_BUILD_VERSION STREQUAL "")
  set(EXECUTORCH_BUILD_VERSION "source build")  # the wheel's package sets it; a source install does not
endif()

# executorch::<name> -> the first source-build target that exists; REGISTERS: link it whole-archive.
function(_alignkd_executorch_alias name registers)
  if(TARGET executorch::${name})
    return()
  endif()
  foreach(candidate IN LISTS ARGN)
    if(TARGET ${candidate})
      add_library(executorch::${name} INTERFACE IMPORTED)
      if(registers)
        target_link_libraries(executorch::${name} INTERFACE "$<LINK_LIBRARY:WHOLE_ARCHIVE,${candidate}>")
      else()
        target_link_libraries(executorch::${name} INTERFACE ${candidate})
      endif()
      return()
    endif()
  endforeach()
endfunction()

if(NOT TARGET executorch::runtime)
  if(NOT TARGET executorch_core)
    message(FATAL_ERROR "ALIGNKD_EXECUTORCH_PREFIX=${ALIGNKD_EXECUTORCH_PREFIX} holds an ExecuTorch package without "
                        "the executorch_core target; install ExecuTorch there with `cmake --install` (runtime/android/README.md)")
  endif()
  add_library(executorch::runtime INTERFACE IMPORTED)
  # prim ops (sym_size, item, ...) register from `executorch`; executorch_core is the runtime itself
  target_link_libraries(executorch::runtime INTERFACE "$<LINK_LIBRARY:WHOLE_ARCHIVE,executorch>" executorch_core)
endif()
_alignkd_executorch_alias(kernels_optimized TRUE optimized_native_cpu_ops_lib)
_alignkd_executorch_alias(kernels_quantized TRUE quantized_ops_lib)
_alignkd_executorch_alias(backend_xnnpack TRUE xnnpack_backend)
_alignkd_executorch_alias(threadpool FALSE extension_threadpool)
_alignkd_executorch_alias(etdump FALSE etdump)

foreach(required kernels_optimized kernels_quantized backend_xnnpack)
  if(NOT TARGET executorch::${required})
    message(FATAL_ERROR "the ExecuTorch install at ${ALIGNKD_EXECUTORCH_PREFIX} lacks the ${required} library; rebuild "
                        "it with -DEXECUTORCH_BUILD_KERNELS_OPTIMIZED=ON -DEXECUTORCH_BUILD_KERNELS_QUANTIZED=ON "
                        "-DEXECUTORCH_BUILD_XNNPACK=ON (runtime/android/README.md)")
  endif()
endforeach()
