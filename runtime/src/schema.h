// A small JSON Schema (draft 2020-12 subset) checker for the bundle manifest, so the C++ reader holds a
// manifest to the same contract file as Python (alignkd/contract/manifest.schema.json, compiled into the runner).
// Keywords honoured: type, const, enum, required, properties, additionalProperties, items, minItems,
// maxItems, minProperties, minimum, maximum, pattern, $ref (#/$defs/...). Others are ignored.
#pragma once

#include "error.h"

#include <nlohmann/json.hpp>

namespace alignkd {

// Ok, or the first violation as "at <path>: <what>" (path like Python's: image/size, or (top level)).
Status validate_schema(const nlohmann::json& value, const nlohmann::json& schema);

// The manifest schema compiled into this runner.
const nlohmann::json& manifest_schema();

}  // namespace alignkd
