# The shape checks of docs/design.md, as a CTest test (host_layers):
#   - no circle of calls between the library's source files (read from the
#     symbol tables of fo_host's objects by scripts/check_layers.py);
#   - no source file over 700 lines in host/, kernels/, mpi/, tests/, bench/
#     and examples/.  The public header is the reference manual and is
#     exempt.
find_program(FO_PYTHON3 python3)
find_program(FO_NM nm)
if(NOT FO_PYTHON3 OR NOT FO_NM)
  message(STATUS "fusedopt: python3 or nm not found, the host_layers test is not registered")
  return()
endif()
file(GLOB_RECURSE fo_layer_sources CONFIGURE_DEPENDS
  ${PROJECT_SOURCE_DIR}/host/*.c ${PROJECT_SOURCE_DIR}/host/*.h
  ${PROJECT_SOURCE_DIR}/kernels/*.cu ${PROJECT_SOURCE_DIR}/kernels/*.cuh
  ${PROJECT_SOURCE_DIR}/kernels/*.h ${PROJECT_SOURCE_DIR}/mpi/*.c
  ${PROJECT_SOURCE_DIR}/tests/*.c ${PROJECT_SOURCE_DIR}/tests/*.cpp
  ${PROJECT_SOURCE_DIR}/tests/*.h ${PROJECT_SOURCE_DIR}/bench/*.c
  ${PROJECT_SOURCE_DIR}/bench/*.h ${PROJECT_SOURCE_DIR}/examples/*.c
  ${PROJECT_SOURCE_DIR}/examples/*.h)
add_test(NAME host_layers
  COMMAND ${FO_PYTHON3} ${PROJECT_SOURCE_DIR}/scripts/check_layers.py --max-lines 700
          --sources ${fo_layer_sources} "$<TARGET_OBJECTS:fo_host>"
  COMMAND_EXPAND_LISTS)

# A CUDA build's libfusedopt loads NCCL only when a call needs it
# (host/dp/nccl.c): the shared library must not name it as a dependency,
# or CPU-only use would need NCCL installed (docs/install.md).
find_program(FO_READELF readelf)
if(FO_ENABLE_NCCL AND FO_READELF)
  add_test(NAME library_links_no_nccl
    COMMAND sh -c "! ${FO_READELF} -d \"$1\" | grep -i 'NEEDED.*libnccl'" sh
            $<TARGET_FILE:fusedopt>)
endif()

# The CUDA runtime is linked statically (host/CMakeLists.txt): the shared
# library names no libcudart, so CPU-only use of a CUDA build needs no CUDA
# installation (issue #19).
if(FO_ENABLE_CUDA AND FO_READELF)
  add_test(NAME library_links_no_cudart
    COMMAND sh -c "! ${FO_READELF} -d \"$1\" | grep -i 'NEEDED.*libcudart'" sh
            $<TARGET_FILE:fusedopt>)
endif()
# Only the API leaves the shared library: every defined dynamic symbol is
# fo_-prefixed (none of the static CUDA runtime's, none of the internals).
find_program(FO_NM nm)
if(FO_NM)
  add_test(NAME library_exports_only_fo
    COMMAND sh -c "${FO_NM} -D --defined-only \"$1\" | awk '{print $3}' | grep -v '^fo_' | grep -v '^_init$' | grep -v '^_fini$' | grep . && exit 1; exit 0" sh
            $<TARGET_FILE:fusedopt>)
endif()
