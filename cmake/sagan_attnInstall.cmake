# Install rules and CMake package of sagan-attn for C++ (LibTorch) programs. Included once, at the end
# of CMakeLists.txt.
#
#   cmake --install build/cmake --prefix <prefix>
# installs
#   <prefix>/lib/libsagan_attn.so
#   <prefix>/include/sagan_attn/sagan_attn.h, build_info.h        (the public headers, nothing else)
#   <prefix>/lib/cmake/sagan_attn/sagan_attnConfig.cmake, sagan_attnConfigVersion.cmake
# and a program does
#   find_package(sagan_attn 0.1 REQUIRED)   # finds Torch as well
#   target_link_libraries(app PRIVATE sagan_attn::sagan_attn)
# (examples/cpp; scripts/test_cpp_package.sh installs, builds and runs it).
#
# The package's target is written by hand in the config rather than exported from the build target:
# libsagan_attn links torch through the build's object library, which is no business of an installed
# package; the imported target links the installed torch's `torch` target instead.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(SAGAN_ATTN_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/sagan_attn")
set(SAGAN_ATTN_PUBLIC_HEADERS csrc/sagan_attn.h csrc/build_info.h)
set(SAGAN_ATTN_LIBRARY_FILE "${CMAKE_SHARED_LIBRARY_PREFIX}sagan_attn${CMAKE_SHARED_LIBRARY_SUFFIX}")
# LibTorch has no stable C++ ABI across minor versions: the package insists on the one it was built with.
string(REGEX MATCH "^[0-9]+\\.[0-9]+" SAGAN_ATTN_TORCH_MAJOR_MINOR "${Torch_VERSION}")

# The installed library finds libtorch (and, in a CUDA build, the CUDA libraries) where the build found
# them, i.e. in the torch wheel, and anything installed beside it; the build folder is not searched.
# torch's lib folder is named: INSTALL_RPATH_USE_LINK_PATH leaves out folders inside the project, where
# the torch of the project's own virtual environment (.venv) lies.
set_target_properties(sagan_attn PROPERTIES INSTALL_RPATH "$ORIGIN;${TORCH_INSTALL_PREFIX}/lib"
                                            INSTALL_RPATH_USE_LINK_PATH TRUE)

install(TARGETS sagan_attn LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}")
install(FILES ${SAGAN_ATTN_PUBLIC_HEADERS} DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}/sagan_attn")

configure_package_config_file(
  "${PROJECT_SOURCE_DIR}/cmake/sagan_attnConfig.cmake.in"
  "${PROJECT_BINARY_DIR}/sagan_attnConfig.cmake"
  INSTALL_DESTINATION "${SAGAN_ATTN_INSTALL_CMAKEDIR}"
  PATH_VARS CMAKE_INSTALL_INCLUDEDIR CMAKE_INSTALL_LIBDIR)
# 0.x: a minor version may change the API, so only the same major.minor is compatible.
write_basic_package_version_file(
  "${PROJECT_BINARY_DIR}/sagan_attnConfigVersion.cmake"
  VERSION "${PROJECT_VERSION}" COMPATIBILITY SameMinorVersion)
install(FILES "${PROJECT_BINARY_DIR}/sagan_attnConfig.cmake"
              "${PROJECT_BINARY_DIR}/sagan_attnConfigVersion.cmake"
        DESTINATION "${SAGAN_ATTN_INSTALL_CMAKEDIR}")
