// GoogleTest of the one-op-library rule (csrc/op_registration.h) in a LibTorch program: this test binary
// links libsagan_attn.so, so its copy is in the global scope; a second file of the library (a copy in a
// temporary folder, as a C++ extension or a Python package might ship one) loaded into the same process
// must load, register nothing (no clash, no kernel overridden: no warning), leave the ops working, and
// unload without taking the first copy's ops with it.
#include <gtest/gtest.h>
#include <c10/util/Exception.h>
#include <dlfcn.h>
#include <torch/torch.h>

#include <filesystem>
#include <string>
#include <vector>

#include "csrc/build_info.h"
#include "csrc/sagan_attn.h"

namespace {

// Collects the c10 warnings issued while it is installed.
struct CollectWarnings : c10::WarningHandler {
  std::vector<std::string> messages;
  void process(const c10::Warning& warning) override { messages.push_back(warning.msg()); }
};

torch::Tensor run_op() {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
  auto opts = torch::TensorOptions().dtype(torch::kDouble);
  auto f = at::randn({2, 3, 53}, gen, opts), g = at::randn({2, 3, 29}, gen, opts);
  auto h = at::randn({2, 6, 29}, gen, opts), x = at::randn({2, 6, 53}, gen, opts);
  return sagan::self_attn(f, g, h, x, 0.8, 0.5);
}

}  // namespace

TEST(Library, SecondFileOfTheLibraryRegistersNothing) {
  Dl_info info{};
  ASSERT_NE(dladdr(reinterpret_cast<void*>(&sagan::build_info), &info), 0);
  const std::filesystem::path linked = info.dli_fname;
  const auto dir = std::filesystem::temp_directory_path() /
                   ("sagan_attn_test_library_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto copy = dir / linked.filename();
  std::filesystem::copy_file(linked, copy, std::filesystem::copy_options::overwrite_existing);

  const auto before = run_op();
  CollectWarnings warnings;
  void* handle = nullptr;
  {
    c10::WarningUtils::WarningHandlerGuard guard(&warnings);
    handle = dlopen(copy.c_str(), RTLD_NOW | RTLD_LOCAL);
  }
  ASSERT_NE(handle, nullptr) << dlerror();
  for (const auto& message : warnings.messages) ADD_FAILURE() << "loading " << copy << " warned: " << message;
  EXPECT_TRUE(torch::equal(run_op(), before));

  EXPECT_EQ(dlclose(handle), 0) << dlerror();
  EXPECT_TRUE(torch::equal(run_op(), before));
  std::filesystem::remove_all(dir);
}
