# Sets CMAKE_CUDA_COMPILER (if unset), CUDA_TOOLKIT_ROOT_DIR (torch's CMake config still finds CUDA
# through it), the arch list, and libnvrtc, for the sagan-attn CUDA kernels. Include before
# find_package(Torch).
#   Arch list: TORCH_CUDA_ARCH_LIST (environment, torch's convention: "8.0;9.0", "8.0 9.0", "9.0a",
#   "9.0+PTX"), else the GPU of this machine (nvidia-smi), else 9.0, which CI compiles for. torch's
#   CMake config compiles for TORCH_CUDA_ARCH_LIST whatever CMAKE_CUDA_ARCHITECTURES says (it resets it),
#   so this sets the environment variable when it is unset; CMAKE_CUDA_ARCHITECTURES gets the same list
#   (80-real;90-real, 90a-real, 90) for enable_language(CUDA).
if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX})
  foreach(_nvcc "$ENV{CUDA_HOME}/bin/nvcc" "/usr/local/cuda/bin/nvcc")
    if(EXISTS "${_nvcc}")
      set(CMAKE_CUDA_COMPILER "${_nvcc}")
      break()
    endif()
  endforeach()
endif()

if(NOT CUDA_TOOLKIT_ROOT_DIR)
  set(_nvcc "${CMAKE_CUDA_COMPILER}")
  if(NOT _nvcc)
    set(_nvcc "$ENV{CUDACXX}")
  endif()
  if(_nvcc)
    file(REAL_PATH "${_nvcc}" _nvcc)
    get_filename_component(_bin "${_nvcc}" DIRECTORY)
    get_filename_component(_root "${_bin}" DIRECTORY)
    set(CUDA_TOOLKIT_ROOT_DIR "${_root}" CACHE PATH "CUDA toolkit (the nvcc's)")
  endif()
endif()

if(NOT CMAKE_CUDA_ARCHITECTURES)
  set(_list "$ENV{TORCH_CUDA_ARCH_LIST}")
  if(_list STREQUAL "")
    find_program(_nvidia_smi nvidia-smi)
    if(_nvidia_smi)
      execute_process(COMMAND "${_nvidia_smi}" --query-gpu=compute_cap --format=csv,noheader
                      OUTPUT_VARIABLE _caps OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _rc)
      if(_rc EQUAL 0 AND _caps)
        string(REPLACE "\n" ";" _list "${_caps}")
      endif()
    endif()
  endif()
  if(_list STREQUAL "")
    set(_list "9.0")
  endif()
  string(REPLACE " " ";" _list "${_list}")
  set(_archs "")
  foreach(_a IN LISTS _list)
    string(STRIP "${_a}" _a)
    if(_a STREQUAL "")
      continue()
    endif()
    set(_ptx OFF)
    if(_a MATCHES "\\+PTX$")
      set(_ptx ON)
      string(REPLACE "+PTX" "" _a "${_a}")
    endif()
    if(NOT _a MATCHES "^[0-9]+\\.[0-9]+a?$")
      message(FATAL_ERROR "TORCH_CUDA_ARCH_LIST: cannot read '${_a}' (expected e.g. 8.0, 9.0a, 9.0+PTX)")
    endif()
    string(REPLACE "." "" _a "${_a}")
    if(_ptx)
      list(APPEND _archs "${_a}")
    else()
      list(APPEND _archs "${_a}-real")
    endif()
  endforeach()
  list(REMOVE_DUPLICATES _archs)
  set(CMAKE_CUDA_ARCHITECTURES "${_archs}")
  # torch's CMake config computes its own gencode list from TORCH_CUDA_ARCH_LIST (all common archs
  # when unset); keep it to ours.
  if("$ENV{TORCH_CUDA_ARCH_LIST}" STREQUAL "")
    string(REPLACE ";" " " _torch_list "${_list}")
    set(ENV{TORCH_CUDA_ARCH_LIST} "${_torch_list}")
  endif()
endif()

# torch's CMake config links libnvrtc; a toolkit made of pip wheels (nvcc and cudart only) has none, but
# the torch wheel depends on nvidia's nvrtc wheel: use that one.
if(NOT CUDA_nvrtc_LIBRARY)
  find_library(CUDA_nvrtc_LIBRARY nvrtc HINTS "${CUDA_TOOLKIT_ROOT_DIR}" PATH_SUFFIXES lib64 lib
               NO_DEFAULT_PATH)
endif()
if(NOT CUDA_nvrtc_LIBRARY)
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c
      "import glob, os, torch; d = os.path.dirname(os.path.dirname(torch.__file__)); print(next(iter(sorted(glob.glob(os.path.join(d, 'nvidia', '*', 'lib', 'libnvrtc.so.*')) + sorted(glob.glob(os.path.join(d, 'nvidia', 'cuda_nvrtc', 'lib', 'libnvrtc.so.*'))))), ''))"
    OUTPUT_VARIABLE _nvrtc OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(_nvrtc)
    set(CUDA_nvrtc_LIBRARY "${_nvrtc}" CACHE FILEPATH "libnvrtc (from the nvidia wheels beside torch)" FORCE)
  endif()
endif()
