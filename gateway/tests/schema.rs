//! The shipped JSON Schema (`config/tollgate.schema.json`): current with the config types, and every
//! config in `config/` valid against it by an independent validator (the `jsonschema` crate, not
//! `schemars`, which made it), while a typo'd field is refused.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn shipped() -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("config/tollgate.schema.json"))
        .expect("config/tollgate.schema.json is shipped");
    serde_json::from_str(&text).expect("the shipped schema is JSON")
}

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&shipped()).expect("the shipped schema is a valid JSON Schema")
}

/// The YAML files under `config/` that are configs (route test cases are not), and the team files
/// `config/teams.yaml` includes.
fn configs() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(root().join("config"))
        .unwrap()
        .chain(std::fs::read_dir(root().join("config/teams.d")).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name.ends_with(".yaml") || name.ends_with(".yml")) && !name.contains(".cases.")
        })
        .collect();
    out.sort();
    out
}

fn errors(v: &jsonschema::Validator, yaml: &str) -> Vec<String> {
    let doc: serde_json::Value = serde_yaml_ng::from_str(yaml).expect("YAML");
    v.iter_errors(&doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn the_shipped_schema_is_what_tollgate_schema_prints() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("schema")
        .output()
        .expect("run tollgate schema");
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let file = std::fs::read_to_string(root().join("config/tollgate.schema.json")).unwrap();
    assert!(
        printed == file,
        "config/tollgate.schema.json is out of date with the config types: \
         run `tollgate schema > config/tollgate.schema.json` (from the repository root) and commit it"
    );
}

#[test]
fn every_config_under_config_is_valid_against_the_schema_and_names_it() {
    let v = validator();
    let files = configs();
    assert!(files.len() >= 2, "{files:?}");
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        // The schema's path from the file's own folder.
        let schema = if f.parent().unwrap().ends_with("teams.d") {
            "../tollgate.schema.json"
        } else {
            "./tollgate.schema.json"
        };
        assert_eq!(
            text.lines().next(),
            Some(format!("# yaml-language-server: $schema={schema}").as_str()),
            "{} names the schema on its first line",
            f.display()
        );
        let errs = errors(&v, &text);
        assert!(errs.is_empty(), "{}: {errs:#?}", f.display());
    }
}

#[test]
fn a_typo_d_field_is_refused_by_the_schema() {
    let v = validator();
    let good =
        "routes:\n  - name: users\n    match: { path_prefix: /users }\n    upstream: users\n";
    assert_eq!(errors(&v, good), Vec::<String>::new());
    let typo = good.replace("upstream:", "upstreem:");
    let errs = errors(&v, &typo);
    assert!(
        errs.iter()
            .any(|e| e.contains("/routes/0") && e.contains("upstreem")),
        "{errs:#?}"
    );
    // In a plugin's config, a top-level section, and a plugin name too.
    for bad in [
        "plugins: [{ cors: { allow_origin: ['*'] } }]\n",
        "rate_limits: { per_ip: { rate: 5, per: 1s, kye: client_ip } }\n",
        "plugins: [jwtt]\n",
        "server: { limits: { header_read_timeout: 10 } }\n",
        "server: { listen: [nowhere] }\n",
    ] {
        assert!(!errors(&v, bad).is_empty(), "accepted: {bad}");
    }
}

#[test]
fn descriptions_and_defaults_come_from_the_config_types() {
    let s = shipped();
    let defs = &s["$defs"];
    let timeouts = &defs["TimeoutsConfig"]["properties"];
    assert_eq!(timeouts["read"]["default"], "30s", "{timeouts:#}");
    let limits = &defs["LimitsConfig"]["properties"];
    assert_eq!(limits["max_header_bytes"]["default"], "60KiB");
    assert!(
        defs["LimitsConfig"]["properties"]["header_read_timeout"]["description"]
            .as_str()
            .unwrap()
            .contains("request line and headers")
    );
}
