// sagan_attn._C: build_info, version and the op library's file. The ops are not in it: _C links
// libsagan_attn.so (NEEDED, found beside it through RPATH $ORIGIN), whose static initialisers register
// them, so `import sagan_attn` and torch.ops.load_library(sagan_attn.library_path()) load the same file
// once, in either order. It needs no torch types, so it builds against pybind11 alone.
#include <pybind11/pybind11.h>

#include <dlfcn.h>

#include <sstream>
#include <stdexcept>
#include <string>

#include "csrc/build_info.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "sagan-attn's Python module: build information; the ops are in libsagan_attn.so beside it";
  m.attr("__version__") = SAGAN_ATTN_VERSION;
  m.def(
      "build_info",
      []() {
        py::dict info;
        std::istringstream lines(sagan::build_info());
        std::string line;
        while (std::getline(lines, line)) {
          const auto eq = line.find('=');
          if (eq != std::string::npos) info[py::str(line.substr(0, eq))] = line.substr(eq + 1);
        }
        return info;
      },
      "What this build holds: version, torch it was built against, cuda, cuda_archs, cpu_isa.");
  m.def(
      "library_path",
      []() {
        // The file the dynamic loader bound _C's use of the op library to.
        Dl_info info{};
        if (dladdr(reinterpret_cast<void*>(&sagan::build_info), &info) == 0 || info.dli_fname == nullptr) {
          throw std::runtime_error("sagan_attn: dladdr found no file for the op library");
        }
        return std::string(info.dli_fname);
      },
      "The file of the op library (libsagan_attn.so) this module is linked against, as loaded.");
}
