//! Argo CD health checks for the AIOS kinds: where they live in the repository (Argo CD's
//! own `resource_customizations/<group>/<Kind>/` layout), the `argocd-cm` patch generated
//! from them, and what the tests that run them and export their testdata share: a YAML
//! object as a Lua table literal, and an object exported from a run without its noise.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use serde_yaml_ng::Value;

/// The API group of the AIOS kinds.
pub const GROUP: &str = "aios.dev";

/// The kinds that have a health check, in the order the `argocd-cm` patch lists them.
pub const KINDS: [&str; 4] = ["Agent", "ModelProvider", "Project", "Task"];

/// Where the health checks are, from the repository's root.
pub const CUSTOMIZATIONS_DIR: &str = "manifests/gitops/argocd/resource_customizations";

/// The `argocd-cm` patch generated from the health checks, from the repository's root.
pub const ARGOCD_CM_FILE: &str = "manifests/gitops/argocd/argocd-cm-health.yaml";

/// The first line of every testdata file: each is an object exported from a run.
pub const EXPORT_HEADER: &str =
    "# Exported from an end-to-end run by e2e/tests/health_testdata.rs: a real object.";

/// The folder of `kind`'s health check: `health.lua`, `health_test.yaml`, `testdata/`.
pub fn kind_dir(root: &Path, kind: &str) -> PathBuf {
    root.join(CUSTOMIZATIONS_DIR).join(GROUP).join(kind)
}

/// The `argocd-cm` key Argo CD reads `kind`'s health check from.
pub fn health_key(kind: &str) -> String {
    format!("resource.customizations.health.{GROUP}_{kind}")
}

/// The `argocd-cm` patch: a ConfigMap whose data holds every kind's `health.lua` under
/// [`health_key`], each as a literal block so the script is kept byte for byte.
///
/// # Errors
///
/// A `health.lua` that cannot be read, or one a literal block would not carry byte for
/// byte: not ending in exactly one newline (the block clips), starting with a space (the
/// block's indentation is read from its first line), or with tabs or carriage returns.
pub fn argocd_cm(root: &Path) -> Result<String, String> {
    let mut out = String::from(
        "# Generated from resource_customizations/aios.dev/<Kind>/health.lua by\n\
         #   AIOS_WRITE_ARGOCD_CM=1 cargo test -p aios-e2e --test argocd_health\n\
         # Edit the health.lua files, not this one. Merge it into Argo CD's argocd-cm\n\
         # (README-health.md says how).\n\
         apiVersion: v1\n\
         kind: ConfigMap\n\
         metadata:\n  name: argocd-cm\n  namespace: argocd\n  labels:\n    \
         app.kubernetes.io/name: argocd-cm\n    app.kubernetes.io/part-of: argocd\n\
         data:\n",
    );
    for kind in KINDS {
        let path = kind_dir(root, kind).join("health.lua");
        let script = std::fs::read_to_string(&path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        if !script.ends_with('\n') || script.ends_with("\n\n") {
            return Err(format!(
                "{} must end with exactly one newline",
                path.display()
            ));
        }
        if script.starts_with(' ') || script.contains('\t') || script.contains('\r') {
            return Err(format!(
                "{} starts with a space, or has tabs or carriage returns",
                path.display()
            ));
        }
        let _ = writeln!(out, "  {}: |", health_key(kind));
        for line in script.lines() {
            if line.is_empty() {
                out.push('\n');
            } else {
                let _ = writeln!(out, "    {line}");
            }
        }
    }
    Ok(out)
}

/// `value` as a Lua table constructor (or scalar): what Argo CD hands a health script as
/// `obj`, a table per mapping and a sequence per list, null as nil.
pub fn lua_literal(value: &Value) -> String {
    let mut out = String::new();
    write_lua(&mut out, value);
    out
}

fn write_lua(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("nil"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_lua_string(out, s),
        Value::Sequence(items) => {
            out.push('{');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_lua(out, item);
            }
            out.push('}');
        }
        Value::Mapping(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push('[');
                write_lua(out, key);
                out.push_str("] = ");
                write_lua(out, item);
            }
            out.push('}');
        }
        Value::Tagged(tagged) => write_lua(out, &tagged.value),
    }
}

fn write_number(out: &mut String, n: &serde_yaml_ng::Number) {
    if let Some(i) = n.as_i64() {
        let _ = write!(out, "{i}");
    } else if let Some(u) = n.as_u64() {
        let _ = write!(out, "{u}");
    } else {
        let f = n.as_f64().unwrap_or(f64::NAN);
        if f.is_nan() {
            out.push_str("(0/0)");
        } else if f.is_infinite() {
            out.push_str(if f > 0.0 { "math.huge" } else { "(-math.huge)" });
        } else {
            // Rust's shortest round-trip form ("0.85", "1e-7") is valid Lua.
            let _ = write!(out, "{f:?}");
        }
    }
}

/// A Lua string literal: printable ASCII as is, every other byte as a three-digit
/// decimal escape (Lua 5.1 has no `\x` or `\u`), so any UTF-8 text survives exactly.
fn write_lua_string(out: &mut String, s: &str) {
    out.push('"');
    for byte in s.bytes() {
        match byte {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            0x20..=0x7e => out.push(char::from(byte)),
            _ => {
                let _ = write!(out, "\\{byte:03}");
            }
        }
    }
    out.push('"');
}

/// `object` as a health check's testdata: the live object `kubectl get -o yaml` gave,
/// without what only identifies that one copy in that one cluster (uid, resourceVersion,
/// managedFields, creationTimestamp, the namespace, owners' uids, kubectl's
/// last-applied annotation). Its spec, generation, labels and status are kept as they
/// were.
pub fn exported(mut object: Value) -> Value {
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_mapping_mut) {
        for noise in [
            "managedFields",
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "namespace",
            "selfLink",
        ] {
            metadata.remove(noise);
        }
        let annotations_left = metadata
            .get_mut("annotations")
            .and_then(Value::as_mapping_mut)
            .map(|annotations| {
                annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
                annotations.len()
            });
        if annotations_left == Some(0) {
            metadata.remove("annotations");
        }
        if let Some(owners) = metadata
            .get_mut("ownerReferences")
            .and_then(Value::as_sequence_mut)
        {
            for owner in owners.iter_mut().filter_map(Value::as_mapping_mut) {
                owner.remove("uid");
            }
        }
    }
    object
}

/// A testdata file: [`EXPORT_HEADER`], a comment saying what state `object` was caught
/// in, and the object ([`exported`]) as YAML.
///
/// # Errors
///
/// The object cannot be written as YAML.
pub fn testdata_file(object: Value, state: &str) -> Result<String, serde_yaml_ng::Error> {
    let yaml = serde_yaml_ng::to_string(&exported(object))?;
    Ok(format!("{EXPORT_HEADER}\n# {state}\n{yaml}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Value {
        serde_yaml_ng::from_str(text).unwrap()
    }

    #[test]
    fn a_mapping_becomes_a_table_with_every_key_bracketed() {
        let value = yaml("a: 1\nb: [x, true, null]\nc: {d: 0.5}\n");
        assert_eq!(
            lua_literal(&value),
            r#"{["a"] = 1, ["b"] = {"x", true, nil}, ["c"] = {["d"] = 0.5}}"#
        );
    }

    #[test]
    fn strings_escape_quotes_newlines_and_every_non_ascii_byte() {
        let value = Value::String("say \"hi\"\\\n\té".to_owned());
        assert_eq!(lua_literal(&value), r#""say \"hi\"\\\n\009\195\169""#);
    }

    #[test]
    fn an_export_keeps_spec_generation_and_status_and_drops_identity() {
        let object = yaml(
            "apiVersion: aios.dev/v1alpha1\nkind: Task\nmetadata:\n  name: t\n  namespace: ns-1\n  uid: u\n  generation: 2\n  resourceVersion: '9'\n  creationTimestamp: '2026-01-01T00:00:00Z'\n  managedFields: []\n  annotations:\n    kubectl.kubernetes.io/last-applied-configuration: '{}'\n  ownerReferences:\n  - kind: Project\n    name: p\n    uid: owner\nspec: {role: qa}\nstatus: {phase: Running}\n",
        );
        let expected = yaml(
            "apiVersion: aios.dev/v1alpha1\nkind: Task\nmetadata:\n  name: t\n  generation: 2\n  ownerReferences:\n  - kind: Project\n    name: p\nspec: {role: qa}\nstatus: {phase: Running}\n",
        );
        assert_eq!(exported(object), expected);
    }
}
