// Error messages assembled as one std::string by plain concatenation, for TORCH_CHECK.
//
// Why not TORCH_CHECK's own formatting (c10::str, a std::ostringstream instantiated in this
// library): on the H100 machine (g++ 13, torch 2.11) formatting an int64 through std::ostream
// inside this library crashed with a segfault in libstdc++'s number formatting, on CPU and CUDA
// alike, while the same calls built here (g++ 12, torch 2.14) work. A bad input must get its
// error, never a crash, so the messages avoid streams altogether: std::to_string and
// c10::toString / Device::str, which format in code that is not compiled into this library.
#pragma once

#include <charconv>
#include <cstdint>
#include <string>
#include <type_traits>

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>

namespace fused_norm {

inline std::string to_text(const char* s) { return s; }
inline std::string to_text(const std::string& s) { return s; }
inline std::string to_text(c10::ScalarType t) { return c10::toString(t); }
inline std::string to_text(const c10::Device& d) { return d.str(); }
inline std::string to_text(c10::IntArrayRef shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) text += ", ";
    text += std::to_string(shape[i]);
  }
  return text + "]";
}
template <typename Int, typename = std::enable_if_t<std::is_integral_v<Int>>>
std::string to_text(Int value) {
  return std::to_string(value);
}
// A double as Python prints a float for the usual values (0.0, 1e-05, -1.5): the shortest text
// that reads back as the same value (std::to_chars, formatted in libstdc++ itself), with ".0"
// after a whole number.
inline std::string to_text(double value) {
  char buffer[32];
  const std::to_chars_result end = std::to_chars(buffer, buffer + sizeof(buffer), value);
  std::string text(buffer, end.ptr);
  if (text.find_first_not_of("-0123456789") == std::string::npos) text += ".0";
  return text;
}

template <typename... Parts>
std::string message(const Parts&... parts) {
  return (std::string() + ... + to_text(parts));
}

}  // namespace fused_norm
