// What this build of sagan-attn holds, one "key=value" per line: version, torch, cuda, cuda_archs,
// cpu_isa. Kept free of torch headers so the pybind11 module needs none.
#pragma once

#include <string>

namespace sagan {
std::string build_info();
}  // namespace sagan
