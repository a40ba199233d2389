// Which copy of the op library registers the sagan ops in a process.
//
// libsagan_attn.so is the one binary that holds the registrations (the Python module _C links it), but
// a process can still end up with two *files* of it: `import sagan_attn` loads the package's copy and a
// C++ extension or torch.ops.load_library then loads an installed one (build/install/lib, a LibTorch
// program's), which is another file, so the dynamic loader maps it a second time and runs its static
// initialisers again. A second TORCH_LIBRARY(sagan) throws there, where nothing can catch it
// (std::terminate). So every registration block of the library asks registers_ops() first: the first
// copy loaded registers everything; a later copy registers nothing and its ops are the first copy's.
// A later copy whose schemas differ from the registered ones is another version of the library: it
// warns (once, naming both) and still registers nothing; the process keeps the first copy's ops.
//
// Hidden visibility: each copy must answer for itself. Exported, a later copy's calls would bind to the
// first copy's function when that one is in the global scope (a LibTorch program linked against it).
#pragma once

#include <vector>

namespace sagan {

// True in the copy of the library that registers the sagan ops in this process (decided once, before
// this copy's first registration: no sagan::self_attn schema registered yet).
__attribute__((visibility("hidden"))) bool registers_ops();

// The schemas TORCH_LIBRARY(sagan) defines (csrc/sagan_ops.cpp), in order: the registration and the
// check of a later copy against the registered ops read the same list.
__attribute__((visibility("hidden"))) const std::vector<const char*>& op_schemas();

}  // namespace sagan
