// JSON Schema subset checker; see schema.h.
#include "schema.h"

#include <regex>
#include <string>

namespace alignkd {
namespace {

using nlohmann::json;

const char kManifestSchema[] =
#include "manifest_schema.inc"
    ;

bool has_type(const json& v, const std::string& type) {
  if (type == "object") return v.is_object();
  if (type == "array") return v.is_array();
  if (type == "string") return v.is_string();
  if (type == "integer") return v.is_number_integer() || (v.is_number_float() && v.get<double>() == double(int64_t(v.get<double>())));
  if (type == "number") return v.is_number();
  if (type == "boolean") return v.is_boolean();
  if (type == "null") return v.is_null();
  return false;
}

std::string join(const std::string& path, const std::string& key) { return path.empty() ? key : path + "/" + key; }

Error violation(const std::string& path, const std::string& what) {
  return Error{"at " + (path.empty() ? std::string("(top level)") : path) + ": " + what};
}

class Checker {
 public:
  explicit Checker(const json& root) : root_(root) {}

  Status check(const json& v, const json& s, const std::string& path) const {
    if (!s.is_object()) return {};
    if (s.contains("$ref")) ALIGNKD_CHECK_OK(check(v, resolve(s["$ref"].get<std::string>()), path));
    ALIGNKD_CHECK_OK(check_scalar(v, s, path));
    if (v.is_object()) ALIGNKD_CHECK_OK(check_object(v, s, path));
    if (v.is_array()) ALIGNKD_CHECK_OK(check_array(v, s, path));
    return {};
  }

 private:
  const json& resolve(const std::string& ref) const {
    static const json empty = json::object();
    const std::string prefix = "#/$defs/";
    if (ref.rfind(prefix, 0) != 0 || !root_.contains("$defs")) return empty;
    const auto& defs = root_["$defs"];
    auto it = defs.find(ref.substr(prefix.size()));
    return it == defs.end() ? empty : *it;
  }

  Status check_scalar(const json& v, const json& s, const std::string& path) const {
    if (s.contains("type")) {
      bool ok = false;
      if (s["type"].is_array()) {
        for (const auto& t : s["type"]) ok = ok || has_type(v, t.get<std::string>());
      } else {
        ok = has_type(v, s["type"].get<std::string>());
      }
      if (!ok) return violation(path, v.dump() + " is not of type " + s["type"].dump());
    }
    if (s.contains("const") && v != s["const"]) return violation(path, s["const"].dump() + " was expected");
    if (s.contains("enum")) {
      bool found = false;
      for (const auto& e : s["enum"]) found = found || (e == v);
      if (!found) return violation(path, v.dump() + " is not one of " + s["enum"].dump());
    }
    if (v.is_number() && s.contains("minimum") && v.get<double>() < s["minimum"].get<double>())
      return violation(path, v.dump() + " is less than the minimum of " + s["minimum"].dump());
    if (v.is_number() && s.contains("maximum") && v.get<double>() > s["maximum"].get<double>())
      return violation(path, v.dump() + " is greater than the maximum of " + s["maximum"].dump());
    if (v.is_string() && s.contains("pattern") &&
        !std::regex_search(v.get<std::string>(), std::regex(s["pattern"].get<std::string>())))
      return violation(path, v.dump() + " does not match " + s["pattern"].dump());
    return {};
  }

  Status check_object(const json& v, const json& s, const std::string& path) const {
    if (s.contains("required")) {
      for (const auto& key : s["required"]) {
        if (!v.contains(key.get<std::string>())) return violation(path, "'" + key.get<std::string>() + "' is a required property");
      }
    }
    if (s.contains("minProperties") && v.size() < s["minProperties"].get<size_t>())
      return violation(path, v.dump() + " should be non-empty");
    const json* props = s.contains("properties") ? &s["properties"] : nullptr;
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (props != nullptr && props->contains(it.key())) {
        ALIGNKD_CHECK_OK(check(it.value(), (*props)[it.key()], join(path, it.key())));
      } else if (s.contains("additionalProperties")) {
        const json& extra = s["additionalProperties"];
        if (extra.is_boolean() && !extra.get<bool>()) return violation(path, "'" + it.key() + "' is not allowed");
        ALIGNKD_CHECK_OK(check(it.value(), extra, join(path, it.key())));
      }
    }
    return {};
  }

  Status check_array(const json& v, const json& s, const std::string& path) const {
    if (s.contains("minItems") && v.size() < s["minItems"].get<size_t>()) return violation(path, v.dump() + " is too short");
    if (s.contains("maxItems") && v.size() > s["maxItems"].get<size_t>()) return violation(path, v.dump() + " is too long");
    if (s.contains("items")) {
      for (size_t i = 0; i < v.size(); ++i) ALIGNKD_CHECK_OK(check(v[i], s["items"], join(path, std::to_string(i))));
    }
    return {};
  }

  const json& root_;
};

}  // namespace

Status validate_schema(const json& value, const json& schema) { return Checker(schema).check(value, schema, ""); }

const json& manifest_schema() {
  static const json schema = json::parse(kManifestSchema);
  return schema;
}

}  // namespace alignkd
