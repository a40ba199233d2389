// sagan_attn._C: loading it loads libsagan_attn, whose static initialisers register the sagan ops.
// It needs no torch types, so it builds against pybind11 alone.
#include <pybind11/pybind11.h>

#include <sstream>
#include <string>

#include "csrc/build_info.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "sagan-attn compiled library: registers torch.ops.sagan.*";
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
}
