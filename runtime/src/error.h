// Errors as values: every fallible step returns Result<T> (or Status) with a one-sentence message that
// names the input and the fix; main() prints it as one line and exits non-zero.
#pragma once

#include <string>
#include <utility>
#include <variant>

namespace alignkd {

struct Error {
  std::string message;
};

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit, like ExecuTorch's Result
  Result(Error error) : v_(std::move(error)) {}  // NOLINT
  bool ok() const { return std::holds_alternative<T>(v_); }
  T& value() & { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  const Error& error() const { return std::get<Error>(v_); }

 private:
  std::variant<T, Error> v_;
};

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Error error) : error_(std::move(error.message)), failed_(true) {}  // NOLINT
  bool ok() const { return !failed_; }
  Error error() const { return Error{error_}; }

 private:
  std::string error_;
  bool failed_ = false;
};

}  // namespace alignkd

// Propagate a failed Status or Result<T> from the current function.
#define ALIGNKD_CHECK_OK(expr)              \
  do {                                      \
    auto _alignkd_s = (expr);               \
    if (!_alignkd_s.ok()) return _alignkd_s.error(); \
  } while (0)

// `ALIGNKD_ASSIGN(auto x, f())` declares x from a Result or returns its error.
#define ALIGNKD_CONCAT_(a, b) a##b
#define ALIGNKD_CONCAT(a, b) ALIGNKD_CONCAT_(a, b)
#define ALIGNKD_ASSIGN(decl, expr) ALIGNKD_ASSIGN_IMPL(decl, expr, ALIGNKD_CONCAT(_alignkd_r, __LINE__))
#define ALIGNKD_ASSIGN_IMPL(decl, expr, tmp) \
  auto tmp = (expr);                         \
  if (!tmp.ok()) return tmp.error();         \
  decl = std::move(tmp).value()
