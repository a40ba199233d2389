// registers_ops(): the first copy of the library loaded into a process registers the sagan ops, a
// later one nothing (why: csrc/op_registration.h).
#include "csrc/op_registration.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <dlfcn.h>
#include <torch/library.h>

#include <string>

namespace sagan {

namespace {

// The file this copy of the library was loaded from.
std::string this_library_file() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&registers_ops), &info) != 0 && info.dli_fname != nullptr) {
    return info.dli_fname;
  }
  return "(unknown file)";
}

bool first_copy_in_process() {
  auto& dispatcher = c10::Dispatcher::singleton();
  const auto registered = dispatcher.findSchema({"sagan::self_attn", ""});
  if (!registered.has_value()) return true;
  // Another copy registered the ops. Same schemas: the same ops, nothing to do. Different ones: another
  // version of the library, whose ops this process keeps; say so, since this copy's callers expect its.
  std::string differences;
  for (const char* text : op_schemas()) {
    c10::FunctionSchema mine = torch::schema(text);
    mine.setNamespaceIfNotSet("sagan");
    const auto theirs = dispatcher.findSchema({mine.name(), mine.overload_name()});
    if (!theirs.has_value()) {
      differences += "\n  missing: " + c10::toString(mine);
    } else if (!(theirs->schema() == mine)) {
      differences += "\n  registered: " + c10::toString(theirs->schema()) + "\n  this copy:  " + c10::toString(mine);
    }
  }
  if (!differences.empty()) {
    TORCH_WARN("sagan-attn: ", this_library_file(), " was loaded into a process where another build of the "
               "sagan op library had registered the sagan ops (",
               registered->debug(), "), with other schemas:", differences,
               "\nThis copy registers nothing: torch.ops.sagan.* and sagan::self_attn run the first build's "
               "ops. Load one build of sagan-attn per process (for Python: the libsagan_attn.so beside "
               "sagan_attn/_C, sagan_attn.library_path()).");
  }
  return false;
}

}  // namespace

bool registers_ops() {
  static const bool first = first_copy_in_process();
  return first;
}

}  // namespace sagan
