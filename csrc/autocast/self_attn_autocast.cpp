// Autocast of the sagan ops: under torch.autocast the op runs in the autocast dtype, as matmul does
// (ATen's lower_precision_fp policy): every floating CPU/CUDA input but a float64 one (f, g, h, x,
// gamma) is cast to at::autocast::get_autocast_dtype(device) and the op is called again below the
// autocast key. The casts are ordinary differentiable ATen ops (cached for float32 leaf parameters
// like every autocast cast), so gradients reach float32 parameters in their own dtype.
//
// Registered for self_attn (what users and autograd see) and for self_attn_fwd (so a direct call of
// the forward kernel behaves the same). The backward op is not: autograd calls it with the dtypes
// the forward saved, as ATen's own backward ops are called.
//
// Only APIs present from torch 2.11 on are used (get_autocast_dtype(DeviceType), cached_cast,
// get_autocast_dispatch_key_from_device_type). The AutocastCUDA key exists in CPU-only builds of
// torch too, so this file needs no CUDA guard: the kernel is simply never reached there.
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include "csrc/op_registration.h"
#include "csrc/sagan_attn.h"
#include "csrc/self_attn_check.h"

namespace sagan {
namespace {

template <c10::DeviceType kDevice>
at::Tensor self_attn_autocast(const at::Tensor& f, const at::Tensor& g, const at::Tensor& h,
                              const std::optional<at::Tensor>& x, const at::Tensor& gamma,
                              double scale) {
  check_self_attn_layouts(f, g, h, x, gamma);  // before cached_cast copies a nested tensor
  c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(kDevice));
  const auto to = at::autocast::get_autocast_dtype(kDevice);
  return sagan::self_attn(at::autocast::cached_cast(to, f, kDevice),
                          at::autocast::cached_cast(to, g, kDevice),
                          at::autocast::cached_cast(to, h, kDevice),
                          at::autocast::cached_cast(to, x, kDevice),
                          at::autocast::cached_cast(to, gamma, kDevice), scale);
}

template <c10::DeviceType kDevice>
std::tuple<at::Tensor, at::Tensor, at::Tensor> self_attn_fwd_autocast(
    const at::Tensor& f, const at::Tensor& g, const at::Tensor& h,
    const std::optional<at::Tensor>& x, const at::Tensor& gamma, double scale) {
  check_self_attn_layouts(f, g, h, x, gamma);  // before cached_cast copies a nested tensor
  c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(kDevice));
  const auto to = at::autocast::get_autocast_dtype(kDevice);
  return sagan::self_attn_fwd(at::autocast::cached_cast(to, f, kDevice),
                              at::autocast::cached_cast(to, g, kDevice),
                              at::autocast::cached_cast(to, h, kDevice),
                              at::autocast::cached_cast(to, x, kDevice),
                              at::autocast::cached_cast(to, gamma, kDevice), scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(sagan, AutocastCPU, m) {
  if (!sagan::registers_ops()) return;  // a later copy of the library: csrc/op_registration.h
  m.impl("self_attn", &self_attn_autocast<c10::DeviceType::CPU>);
  m.impl("self_attn_fwd", &self_attn_fwd_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(sagan, AutocastCUDA, m) {
  if (!sagan::registers_ops()) return;  // a later copy of the library: csrc/op_registration.h
  m.impl("self_attn", &self_attn_autocast<c10::DeviceType::CUDA>);
  m.impl("self_attn_fwd", &self_attn_fwd_autocast<c10::DeviceType::CUDA>);
}

}  // namespace sagan
