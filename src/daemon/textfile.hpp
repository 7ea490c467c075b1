// Replacing a file so that readers (node_exporter's textfile collector) see
// the old content or the new, never a part of either.
#pragma once

#include <functional>
#include <string>

#include "core/result.hpp"

namespace keepalive {

// Writes the pieces `next` appends (until it returns false) to a temporary
// file in the directory of `path`, mode 0644, then renames it over `path`.
// On failure `path` is untouched, the temporary file removed, and the error
// names the file and the reason.
Result<bool, std::string> replace_file(const std::string& path,
                                       const std::function<bool(std::string&)>& next);

}  // namespace keepalive
