// ExecuTorch's log messages, captured: quiet by default (the runner prints one error line, not the
// runtime's log), echoed with ALIGNKD_RUNNER_VERBOSE=1, and the last error kept to explain a failure.
#pragma once

#include <string>

namespace alignkd {

void install_runtime_log();
std::string last_runtime_error();  // "" when ExecuTorch logged no error since the last call
void clear_runtime_error();

}  // namespace alignkd
