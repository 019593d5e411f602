//! The container and Kubernetes files (`Dockerfile`, `.dockerignore`, `deploy/`):
//! the image copies the binary `cargo build --release` makes and runs it as non-root;
//! every manifest is valid YAML with `apiVersion`/`kind`; every ConfigMap's
//! `patgate.yaml` passes `patgate check-config` with the env vars its Deployment sets;
//! probes, ports and the termination grace period agree with that config; the sidecar
//! Service does not expose the app's loopback port.
//!
//! No Docker engine or cluster is needed: everything is parsed from the files.
//! Every manifest is also checked against the Kubernetes API schema
//! (`scripts/k8s-schema-check.py`, over the types of Debian's `python3-kubernetes`).
//! `scripts/check-deploy` runs the same checks from the shell.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize as _;
use serde_yaml::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

// ------------------------------------------------------------------ Cargo.toml

/// One `[lib]`, `[[bin]]`, `[[bench]]`, `[[test]]` or `[[example]]` entry.
#[derive(Debug)]
struct Target {
    kind: String,
    name: Option<String>,
    path: Option<String>,
}

/// The package name and the explicit targets of Cargo.toml (a minimal line parser:
/// the crate has no TOML parser among its dependencies).
fn manifest() -> (String, Vec<Target>) {
    let text = read("Cargo.toml");
    let mut section = String::new();
    let mut package_name = None;
    let mut targets: Vec<Target> = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.starts_with('[') {
            section = line
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_owned();
            if ["lib", "bin", "bench", "test", "example"].contains(&section.as_str()) {
                targets.push(Target {
                    kind: section.clone(),
                    name: None,
                    path: None,
                });
            }
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim().trim_matches('"').to_owned());
        if section == "package" && key == "name" {
            package_name = Some(value);
        } else if let Some(t) = targets.last_mut().filter(|t| t.kind == section) {
            match key {
                "name" => t.name = Some(value),
                "path" => t.path = Some(value),
                _ => {}
            }
        }
    }
    (
        package_name.expect("Cargo.toml has [package] name"),
        targets,
    )
}

/// The binary's name: `[[bin]] name`, else the package name.
fn bin_name() -> String {
    let (package, targets) = manifest();
    let bins: Vec<_> = targets
        .iter()
        .filter(|t| t.kind == "bin")
        .filter_map(|t| t.name.clone())
        .collect();
    match bins.as_slice() {
        [] => package,
        [one] => one.clone(),
        _ => bins
            .iter()
            .find(|b| **b == package)
            .cloned()
            .expect("several [[bin]]s: one named like the package"),
    }
}

/// The source file of each target, as cargo resolves it (explicit path or default).
fn target_files() -> Vec<String> {
    let (package, targets) = manifest();
    let mut files = vec![];
    for t in &targets {
        let name = t.name.clone().unwrap_or_else(|| package.clone());
        let file = t.path.clone().unwrap_or_else(|| match t.kind.as_str() {
            "lib" => "src/lib.rs".to_owned(),
            "bin" if name == package => "src/main.rs".to_owned(),
            "bin" => format!("src/bin/{name}.rs"),
            "bench" => format!("benches/{name}.rs"),
            "test" => format!("tests/{name}.rs"),
            _ => format!("examples/{name}.rs"),
        });
        files.push(file);
    }
    files
}

// ------------------------------------------------------------------ Dockerfile

#[derive(Debug)]
struct Instr {
    kw: String,
    args: String,
}

#[derive(Debug)]
struct Stage {
    image: String,
    name: Option<String>,
    instrs: Vec<Instr>,
}

impl Stage {
    fn all<'a>(&'a self, kw: &'a str) -> impl Iterator<Item = &'a Instr> + 'a {
        self.instrs.iter().filter(move |i| i.kw == kw)
    }

    fn last(&self, kw: &str) -> Option<&Instr> {
        self.instrs.iter().rfind(|i| i.kw == kw)
    }
}

/// `${NAME}` replaced by the global `ARG NAME=default` (what `FROM` sees).
fn substitute(s: &str, args: &BTreeMap<String, String>) -> String {
    let mut out = s.to_owned();
    for (k, v) in args {
        out = out.replace(&format!("${{{k}}}"), v);
    }
    out
}

/// Logical instructions (continuations joined, comments dropped), grouped by stage.
fn dockerfile() -> Vec<Stage> {
    let text = read("Dockerfile");
    let mut logical = vec![];
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        if let Some(body) = t.strip_suffix('\\') {
            cur.push_str(body);
            cur.push(' ');
        } else {
            cur.push_str(t);
            logical.push(std::mem::take(&mut cur));
        }
    }
    assert!(
        cur.trim().is_empty(),
        "Dockerfile ends inside a continuation"
    );

    let mut global_args = BTreeMap::new();
    let mut stages: Vec<Stage> = vec![];
    for l in logical {
        let (kw, args) = l.split_once(char::is_whitespace).unwrap_or((&l, ""));
        let (kw, args) = (kw.to_ascii_uppercase(), args.trim().to_owned());
        if kw == "FROM" {
            let words: Vec<&str> = args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some((*name).to_owned()),
                [_] => None,
                _ => panic!("unexpected FROM: {args}"),
            };
            stages.push(Stage {
                image: substitute(words[0], &global_args),
                name,
                instrs: vec![],
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.instrs.push(Instr { kw, args });
        } else if kw == "ARG"
            && let Some((k, v)) = args.split_once('=')
        {
            global_args.insert(k.trim().to_owned(), v.trim().to_owned());
        }
    }
    stages
}

/// `COPY` flags and operands: (`--from` value, sources, destination).
fn copy_parts(args: &str) -> (Option<String>, Vec<String>, String) {
    let mut from = None;
    let mut operands = vec![];
    for w in args.split_whitespace() {
        if let Some(f) = w.strip_prefix("--from=") {
            from = Some(f.to_owned());
        } else if !w.starts_with("--") {
            operands.push(w.to_owned());
        }
    }
    let dest = operands.pop().expect("COPY has a destination");
    (from, operands, dest)
}

/// The `cargo build ...` command inside a RUN (split at `&&` / `;`), as words.
fn cargo_build_words(run: &str) -> Option<Vec<String>> {
    run.split("&&")
        .flat_map(|s| s.split(';'))
        .find(|c| c.contains("cargo build"))
        .map(|c| c.split_whitespace().map(str::to_owned).collect())
}

#[test]
fn dockerfile_builds_release_binary_and_runs_it_as_non_root() {
    let stages = dockerfile();
    let bin = bin_name();
    assert_eq!(bin, "patgate");
    assert!(
        stages.len() >= 2,
        "multi-stage build expected, got {stages:#?}"
    );

    let runtime = stages.last().unwrap();
    let runtime_copy = runtime
        .all("COPY")
        .map(|i| copy_parts(&i.args))
        .find(|(from, _, _)| from.is_some())
        .expect("the final stage COPYs the binary --from the builder");
    let (from, sources, dest) = runtime_copy;
    let from = from.unwrap();
    let builder_idx = stages
        .iter()
        .position(|s| s.name.as_deref() == Some(from.as_str()))
        .unwrap_or_else(|| panic!("COPY --from={from}: no stage named so"));
    let builder = &stages[builder_idx];
    assert_ne!(
        builder_idx,
        stages.len() - 1,
        "the final stage must not be the builder"
    );
    assert!(
        !runtime.image.starts_with("rust:"),
        "the final image must not be the Rust toolchain: {}",
        runtime.image
    );
    assert!(
        builder.image.starts_with("rust:"),
        "builder image: {}",
        builder.image
    );

    // The path cargo writes `cargo build --release --bin <bin>` to.
    let workdir = builder
        .last("WORKDIR")
        .expect("builder sets WORKDIR")
        .args
        .trim_end_matches('/')
        .to_owned();
    assert!(
        workdir.starts_with('/'),
        "absolute WORKDIR expected: {workdir}"
    );
    assert_eq!(sources, vec![format!("{workdir}/target/release/{bin}")]);
    for env in builder.all("ENV") {
        for var in [
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_TARGET",
            "CARGO_BUILD_TARGET_DIR",
        ] {
            assert!(
                !env.args.contains(var),
                "{var} would move the binary: ENV {}",
                env.args
            );
        }
    }
    let builds: Vec<Vec<String>> = builder
        .all("RUN")
        .filter_map(|r| cargo_build_words(&r.args))
        .collect();
    let real = builds.last().expect("the builder runs cargo build");
    for flag in ["--release", "--locked"] {
        assert!(
            real.contains(&flag.to_owned()),
            "cargo build without {flag}: {real:?}"
        );
    }
    let builds_bin = real.windows(2).any(|w| w[0] == "--bin" && w[1] == bin)
        || real.contains(&format!("--bin={bin}"));
    assert!(builds_bin, "cargo build must build --bin {bin}: {real:?}");
    for flag in ["--target", "--profile", "--target-dir", "--debug"] {
        assert!(
            !real
                .iter()
                .any(|w| w == flag || w.starts_with(&format!("{flag}="))),
            "{flag} changes where cargo writes the binary: {real:?}"
        );
    }

    // Every file the manifest names must exist at the dependency-caching stub build
    // (cargo refuses to load a manifest whose [[bench]] file is missing, even for
    // `--bin`): copied in before it, or created by it. The real sources must be copied
    // in too, and not excluded by .dockerignore.
    let first_build = builder
        .instrs
        .iter()
        .position(|i| i.kw == "RUN" && i.args.contains("cargo build"))
        .unwrap();
    let copies = |instrs: &[Instr]| -> Vec<String> {
        instrs
            .iter()
            .filter(|i| i.kw == "COPY")
            .flat_map(|i| copy_parts(&i.args).1)
            .map(|s| s.trim_start_matches("./").trim_end_matches('/').to_owned())
            .collect()
    };
    let copied = copies(&builder.instrs);
    let copied_before_stub = copies(&builder.instrs[..first_build]);
    for needed in ["Cargo.toml", "Cargo.lock"] {
        assert!(
            copied_before_stub.iter().any(|c| c == needed || c == "."),
            "builder never copies {needed} before the first cargo build"
        );
    }
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_owned())
        .collect();
    for c in &copied {
        assert!(
            !ignored.contains(c),
            ".dockerignore excludes {c}, which the builder copies"
        );
    }
    let covers = |copied: &[String], file: &str| {
        let top = file.split('/').next().unwrap();
        copied.iter().any(|c| c == top || c == file || c == ".")
    };
    for file in target_files() {
        assert!(covers(&copied, &file), "builder never copies {file}");
        assert!(
            covers(&copied_before_stub, &file) || builder.instrs[first_build].args.contains(&file),
            "{file} neither copied before nor stubbed by the first cargo build; \
             cargo cannot load Cargo.toml without it"
        );
    }

    // The final image: runs that binary as non-root, no HEALTHCHECK.
    let entry = runtime.last("ENTRYPOINT").expect("ENTRYPOINT");
    let entry: Vec<String> =
        serde_json::from_str(&entry.args).expect("ENTRYPOINT in exec form (JSON array)");
    let installed = if dest.ends_with('/') {
        format!("{dest}{bin}")
    } else {
        dest.clone()
    };
    assert_eq!(
        entry.first(),
        Some(&installed),
        "ENTRYPOINT runs the copied binary"
    );
    let cmd: Vec<String> =
        serde_json::from_str(&runtime.last("CMD").expect("CMD").args).expect("CMD in exec form");
    assert_eq!(
        cmd.first().map(String::as_str),
        Some("serve"),
        "CMD: {cmd:?}"
    );

    match runtime.last("USER") {
        Some(u) => {
            let user = u.args.split(':').next().unwrap().trim();
            assert!(
                user != "root" && user != "0",
                "final USER is root: {}",
                u.args
            );
        }
        None => assert!(
            runtime.image.ends_with(":nonroot"),
            "no USER and not a :nonroot image: {}",
            runtime.image
        ),
    }
    for stage in &stages {
        assert!(
            stage.last("HEALTHCHECK").is_none(),
            "no HEALTHCHECK: Kubernetes probes decide"
        );
    }
    let exposed: BTreeSet<&str> = runtime
        .all("EXPOSE")
        .flat_map(|e| e.args.split_whitespace())
        .collect();
    assert!(
        exposed.contains("8080") && exposed.contains("9091"),
        "EXPOSE: {exposed:?}"
    );
}

// ------------------------------------------------------------------ deploy/

/// Every YAML document under deploy/, with its file (relative to the repo).
fn deploy_docs() -> Vec<(String, Value)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(p);
            }
        }
    }
    let mut files = vec![];
    walk(&root().join("deploy"), &mut files);
    assert!(!files.is_empty(), "no YAML under deploy/");
    let mut docs = vec![];
    for f in files {
        let rel = f.strip_prefix(root()).unwrap().display().to_string();
        let text = std::fs::read_to_string(&f).unwrap();
        let mut n = 0;
        for de in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(de).unwrap_or_else(|e| panic!("{rel}: invalid YAML: {e}"));
            if v.is_null() {
                continue;
            }
            n += 1;
            docs.push((rel.clone(), v));
        }
        assert!(n > 0, "{rel}: no YAML document");
    }
    docs
}

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(v, path).and_then(Value::as_str)
}

fn seq<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    at(v, path)
        .and_then(Value::as_sequence)
        .map_or(&[], Vec::as_slice)
}

fn kind(v: &Value) -> &str {
    str_at(v, &["kind"]).unwrap_or("")
}

fn name(v: &Value) -> &str {
    str_at(v, &["metadata", "name"]).unwrap_or("")
}

fn dir_of(file: &str) -> &str {
    file.rsplit_once('/').map_or("", |(d, _)| d)
}

fn as_u64(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

#[test]
fn every_deploy_yaml_document_has_api_version_and_kind() {
    let docs = deploy_docs();
    for (file, doc) in &docs {
        assert!(doc.is_mapping(), "{file}: a document is not a mapping");
        assert!(
            str_at(doc, &["apiVersion"]).is_some_and(|s| !s.is_empty()),
            "{file}: no apiVersion"
        );
        assert!(!kind(doc).is_empty(), "{file}: no kind");
        if kind(doc) != "Kustomization" {
            assert!(
                !name(doc).is_empty(),
                "{file}: a {} without metadata.name",
                kind(doc)
            );
        }
    }
    // Each kustomization lists every other YAML file of its directory, and they exist.
    for (file, doc) in docs.iter().filter(|(_, d)| kind(d) == "Kustomization") {
        let listed: BTreeSet<&str> = seq(doc, &["resources"])
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let dir = root().join(dir_of(file));
        for r in &listed {
            assert!(dir.join(r).exists(), "{file}: resource {r} does not exist");
        }
        for e in std::fs::read_dir(&dir).unwrap() {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            let yaml = n.ends_with(".yaml") || n.ends_with(".yml");
            if yaml && !file.ends_with(&format!("/{n}")) {
                assert!(
                    listed.contains(n.as_str()),
                    "{file}: {n} is not listed in resources"
                );
            }
        }
    }
    for shape in ["deploy/gateway", "deploy/sidecar"] {
        for k in ["ConfigMap", "Deployment", "Service", "Kustomization"] {
            assert!(
                docs.iter().any(|(f, d)| dir_of(f) == shape && kind(d) == k),
                "{shape} has no {k}"
            );
        }
    }
}

/// A patgate container of a Deployment, with the config its ConfigMap mounts.
struct Gateway<'a> {
    file: &'a str,
    deployment: &'a Value,
    container: &'a Value,
    config_map: String,
    config_text: String,
    config: Value,
}

fn gateways(docs: &[(String, Value)]) -> Vec<Gateway<'_>> {
    let mut out = vec![];
    for (file, dep) in docs.iter().filter(|(_, d)| kind(d) == "Deployment") {
        for c in seq(dep, &["spec", "template", "spec", "containers"]) {
            let image = str_at(c, &["image"]).unwrap_or("");
            if str_at(c, &["name"]) != Some("patgate") && !image.contains("patgate") {
                continue;
            }
            let args: Vec<&str> = seq(c, &["args"]).iter().filter_map(Value::as_str).collect();
            let config_path = args
                .windows(2)
                .find(|w| w[0] == "--config")
                .map(|w| w[1])
                .unwrap_or("/etc/patgate/patgate.yaml");
            let (mount_dir, file_name) = config_path.rsplit_once('/').unwrap();
            let mount = seq(c, &["volumeMounts"])
                .iter()
                .find(|m| {
                    str_at(m, &["mountPath"]).map(|p| p.trim_end_matches('/')) == Some(mount_dir)
                })
                .unwrap_or_else(|| panic!("{file}: nothing mounted at {mount_dir}"));
            let volume = str_at(mount, &["name"]).unwrap();
            let cm = seq(dep, &["spec", "template", "spec", "volumes"])
                .iter()
                .find(|v| str_at(v, &["name"]) == Some(volume))
                .and_then(|v| str_at(v, &["configMap", "name"]))
                .unwrap_or_else(|| panic!("{file}: volume {volume} is not a ConfigMap"));
            let (_, cm_doc) = docs
                .iter()
                .find(|(f, d)| dir_of(f) == dir_of(file) && kind(d) == "ConfigMap" && name(d) == cm)
                .unwrap_or_else(|| panic!("{file}: ConfigMap {cm} not in {}", dir_of(file)));
            let text = str_at(cm_doc, &["data", file_name])
                .unwrap_or_else(|| panic!("ConfigMap {cm} has no data.{file_name}"))
                .to_owned();
            let config: Value = serde_yaml::from_str(&text).unwrap();
            out.push(Gateway {
                file,
                deployment: dep,
                container: c,
                config_map: cm.to_owned(),
                config_text: text,
                config,
            });
        }
    }
    out
}

/// `${NAME}` references of a config: (name, has a `:-` fallback). `$${` is literal.
fn env_refs(text: &str) -> BTreeMap<String, bool> {
    let mut refs = BTreeMap::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        let escaped = i > 0 && rest.as_bytes()[i - 1] == b'$';
        let after = &rest[i + 2..];
        let end = after.find('}').unwrap_or(after.len());
        if !escaped {
            let body = &after[..end];
            let (name, fallback) = match body.split_once(":-") {
                Some((n, _)) => (n, true),
                None => (body, false),
            };
            let e = refs.entry(name.trim().to_owned()).or_insert(true);
            *e &= fallback;
        }
        rest = &after[end.min(after.len())..];
    }
    refs
}

fn dummy_value(var: &str, admin_keys_var: Option<&str>) -> String {
    if Some(var) == admin_keys_var {
        format!("ops:{}", "ab".repeat(32))
    } else if var.contains("REDIS") {
        "redis://redis.invalid:6379".to_owned()
    } else {
        "dummy".to_owned()
    }
}

fn check_config(text: &str, env: &BTreeMap<String, Option<String>>) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("patgate.yaml");
    std::fs::write(&path, text).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_patgate"));
    cmd.arg("check-config").arg("--config").arg(&path);
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let out = cmd.output().expect("run patgate check-config");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn every_configmap_patgate_yaml_passes_check_config_with_its_deployments_env() {
    let docs = deploy_docs();
    let config_maps: Vec<_> = docs
        .iter()
        .filter(|(_, d)| kind(d) == "ConfigMap" && at(d, &["data", "patgate.yaml"]).is_some())
        .collect();
    assert!(
        config_maps.len() >= 2,
        "a patgate.yaml ConfigMap per shape expected"
    );
    let gws = gateways(&docs);

    for (file, cm) in config_maps {
        let text = str_at(cm, &["data", "patgate.yaml"]).unwrap();
        let config: Value = serde_yaml::from_str(text).unwrap();
        let admin_keys_var = str_at(&config, &["admin", "api_keys_env"]);
        let refs = env_refs(text);
        let mut all_vars: BTreeSet<String> = refs.keys().cloned().collect();
        all_vars.extend(admin_keys_var.map(str::to_owned));

        // The env vars the config needs are set by every Deployment mounting it.
        let users: Vec<_> = gws
            .iter()
            .filter(|g| dir_of(g.file) == dir_of(file) && g.config_map == name(cm))
            .collect();
        assert!(
            !users.is_empty(),
            "{file}: ConfigMap {} is mounted by no Deployment",
            name(cm)
        );
        for g in &users {
            assert_eq!(g.config_text, text);
            let env = seq(g.container, &["env"]);
            for var in &all_vars {
                let def = env
                    .iter()
                    .find(|e| str_at(e, &["name"]) == Some(var.as_str()));
                let def = def.unwrap_or_else(|| {
                    panic!(
                        "{}: the patgate container does not set {var} ({file} uses it)",
                        g.file
                    )
                });
                let required = refs.get(var) == Some(&false);
                let optional =
                    at(def, &["valueFrom", "secretKeyRef", "optional"]).and_then(Value::as_bool);
                assert!(
                    !(required && optional == Some(true)),
                    "{}: {var} has no fallback in {file} but its secretKeyRef is optional",
                    g.file
                );
            }
        }

        // Valid with every variable set, and with only the required ones set (the
        // `${NAME:-fallback}` defaults must be valid too).
        let full: BTreeMap<_, _> = all_vars
            .iter()
            .map(|v| (v.clone(), Some(dummy_value(v, admin_keys_var))))
            .collect();
        let (ok, out) = check_config(text, &full);
        assert!(
            ok,
            "{file}: patgate check-config failed with {full:?}:\n{out}"
        );
        let minimal: BTreeMap<_, _> = all_vars
            .iter()
            .map(|v| {
                let needed = refs.get(v) == Some(&false);
                (v.clone(), needed.then(|| dummy_value(v, admin_keys_var)))
            })
            .collect();
        let (ok, out) = check_config(text, &minimal);
        assert!(
            ok,
            "{file}: patgate check-config failed with {minimal:?}:\n{out}"
        );
    }
}

/// (host, port) of an `IP:port` listen address; `default` when the key is absent.
fn listen_addr(config: &Value, path: &[&str], default: &str) -> (String, u64) {
    let s = str_at(config, path).unwrap_or(default);
    let (host, port) = s
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("bad listen address {s}"));
    (
        host.to_owned(),
        port.parse().unwrap_or_else(|_| panic!("bad port in {s}")),
    )
}

/// A probe's / Service's port (number or container port name) as a number.
fn resolve_port(port: &Value, containers: &[&Value]) -> Option<u64> {
    if let Some(n) = port.as_u64() {
        return Some(n);
    }
    let name = port.as_str()?;
    containers
        .iter()
        .flat_map(|c| seq(c, &["ports"]))
        .find(|p| str_at(p, &["name"]) == Some(name))
        .and_then(|p| at(p, &["containerPort"]))
        .and_then(Value::as_u64)
}

#[test]
fn deployments_probe_the_admin_port_and_outlast_the_drain() {
    let docs = deploy_docs();
    let gws = gateways(&docs);
    let shapes: BTreeSet<&str> = gws.iter().map(|g| dir_of(g.file)).collect();
    assert!(shapes.contains("deploy/gateway") && shapes.contains("deploy/sidecar"));

    for g in &gws {
        let f = g.file;
        let c = [g.container];
        let (admin_host, admin_port) =
            listen_addr(&g.config, &["admin", "listen"], "127.0.0.1:9091");
        let (data_host, data_port) = listen_addr(&g.config, &["listen"], "127.0.0.1:8080");
        // The kubelet and the Service reach the pod IP, not the container's loopback.
        for (what, host) in [("admin.listen", &admin_host), ("listen", &data_host)] {
            assert!(
                host == "0.0.0.0" || host == "[::]",
                "{f}: {what} binds {host}: unreachable from the kubelet"
            );
        }
        let declared: BTreeSet<u64> = seq(g.container, &["ports"])
            .iter()
            .filter_map(|p| at(p, &["containerPort"]).and_then(Value::as_u64))
            .collect();
        assert!(
            declared.contains(&data_port) && declared.contains(&admin_port),
            "{f}: containerPorts {declared:?}"
        );

        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = at(g.container, &[probe, "httpGet"])
                .unwrap_or_else(|| panic!("{f}: no {probe}.httpGet"));
            assert_eq!(str_at(get, &["path"]), Some(path), "{f}: {probe} path");
            let port = resolve_port(at(get, &["port"]).unwrap(), &c);
            assert_eq!(
                port,
                Some(admin_port),
                "{f}: {probe} must hit the admin port {admin_port}"
            );
        }

        let pod = at(g.deployment, &["spec", "template", "spec"]).unwrap();
        let grace = at(pod, &["terminationGracePeriodSeconds"])
            .and_then(as_u64)
            .unwrap_or(30);
        let drain = at(&g.config, &["timeouts", "shutdown_grace_seconds"])
            .and_then(as_u64)
            .unwrap_or(30);
        let pre_stop = at(g.container, &["lifecycle", "preStop", "sleep", "seconds"])
            .and_then(as_u64)
            .unwrap_or(0);
        assert!(
            grace > drain + pre_stop,
            "{f}: terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop} s + shutdown_grace_seconds {drain}"
        );
        assert!(
            at(g.container, &["lifecycle", "preStop", "exec"]).is_none(),
            "{f}: the distroless image has no shell for exec hooks"
        );

        let sc = at(g.container, &["securityContext"])
            .unwrap_or_else(|| panic!("{f}: no securityContext"));
        let pod_sc = at(pod, &["securityContext"]);
        let non_root =
            at(sc, &["runAsNonRoot"]).or_else(|| pod_sc.and_then(|p| at(p, &["runAsNonRoot"])));
        assert_eq!(
            non_root.and_then(Value::as_bool),
            Some(true),
            "{f}: runAsNonRoot"
        );
        assert_eq!(
            at(sc, &["readOnlyRootFilesystem"]).and_then(Value::as_bool),
            Some(true),
            "{f}: readOnlyRootFilesystem"
        );
        assert_eq!(
            at(sc, &["allowPrivilegeEscalation"]).and_then(Value::as_bool),
            Some(false),
            "{f}: allowPrivilegeEscalation"
        );
        let drops: Vec<&str> = seq(sc, &["capabilities", "drop"])
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(drops.contains(&"ALL"), "{f}: capabilities.drop ALL");
        assert!(
            at(g.container, &["resources", "requests"]).is_some(),
            "{f}: resource requests"
        );
        assert!(
            at(g.container, &["resources", "limits", "memory"]).is_some(),
            "{f}: memory limit"
        );
    }
}

/// Services in `dir` whose selector matches the pod template of `dep`.
fn services_of<'a>(docs: &'a [(String, Value)], dir: &str, dep: &Value) -> Vec<&'a Value> {
    let labels = at(dep, &["spec", "template", "metadata", "labels"]).and_then(Value::as_mapping);
    docs.iter()
        .filter(|(f, d)| dir_of(f) == dir && kind(d) == "Service")
        .map(|(_, d)| d)
        .filter(|svc| {
            let sel = at(svc, &["spec", "selector"]).and_then(Value::as_mapping);
            match (sel, labels) {
                (Some(sel), Some(labels)) => {
                    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
                }
                _ => false,
            }
        })
        .collect()
}

#[test]
fn services_target_declared_ports_and_the_sidecar_hides_the_app_port() {
    let docs = deploy_docs();
    // Every Service port of every Deployment resolves to a declared container port.
    for (file, dep) in docs.iter().filter(|(_, d)| kind(d) == "Deployment") {
        let containers: Vec<&Value> = seq(dep, &["spec", "template", "spec", "containers"])
            .iter()
            .collect();
        for svc in services_of(&docs, dir_of(file), dep) {
            for p in seq(svc, &["spec", "ports"]) {
                let target = at(p, &["targetPort"]).or_else(|| at(p, &["port"])).unwrap();
                assert!(
                    resolve_port(target, &containers).is_some(),
                    "Service {}: targetPort {target:?} is no container port of {}",
                    name(svc),
                    name(dep)
                );
            }
        }
    }

    // Sidecar: the app's port (patgate's loopback upstream) is not reachable from
    // outside the pod; the Service only reaches patgate's data port.
    let gws = gateways(&docs);
    let side = gws
        .iter()
        .find(|g| dir_of(g.file) == "deploy/sidecar")
        .expect("a sidecar Deployment");
    let mut app_ports = BTreeSet::new();
    let upstream_urls = seq(&side.config, &["routes"])
        .iter()
        .filter_map(|r| str_at(r, &["upstream"]))
        .chain(
            at(&side.config, &["upstreams"])
                .and_then(Value::as_mapping)
                .into_iter()
                .flat_map(|m| m.values())
                .flat_map(|u| {
                    str_at(u, &["url"])
                        .into_iter()
                        .chain(seq(u, &["urls"]).iter().filter_map(Value::as_str))
                }),
        );
    for url in upstream_urls {
        let Some(rest) = url.strip_prefix("http://") else {
            continue;
        };
        let authority = rest.split('/').next().unwrap();
        let (host, port) = authority.rsplit_once(':').unwrap_or((authority, "80"));
        assert!(
            host == "127.0.0.1" || host == "localhost" || host == "[::1]",
            "sidecar upstream {url} is not the app on loopback"
        );
        app_ports.insert(port.parse::<u64>().unwrap());
    }
    assert_eq!(
        app_ports,
        BTreeSet::from([8000]),
        "the example app listens on 127.0.0.1:8000"
    );

    let (_, data_port) = listen_addr(&side.config, &["listen"], "127.0.0.1:8080");
    let containers: Vec<&Value> = seq(side.deployment, &["spec", "template", "spec", "containers"])
        .iter()
        .collect();
    assert!(
        containers.len() >= 2,
        "the sidecar pod runs the app and patgate"
    );
    for c in &containers {
        for p in seq(c, &["ports"]) {
            let n = at(p, &["containerPort"]).and_then(Value::as_u64);
            assert!(
                !n.is_some_and(|n| app_ports.contains(&n)),
                "container {:?} declares the app port",
                str_at(c, &["name"])
            );
        }
    }
    let services = services_of(&docs, "deploy/sidecar", side.deployment);
    assert!(!services.is_empty(), "no Service selects the sidecar pod");
    for svc in services {
        for p in seq(svc, &["spec", "ports"]) {
            let port = at(p, &["port"]).and_then(Value::as_u64);
            let target = resolve_port(
                at(p, &["targetPort"]).or_else(|| at(p, &["port"])).unwrap(),
                &containers,
            );
            assert!(
                !port.is_some_and(|n| app_ports.contains(&n)),
                "Service {} exposes the app port",
                name(svc)
            );
            assert_eq!(
                target,
                Some(data_port),
                "Service {} must target patgate's {data_port}",
                name(svc)
            );
        }
    }
}

#[test]
fn env_refs_finds_required_and_defaulted_variables() {
    let refs = env_refs("a: ${A}\nb: ${B:-x}\nc: $${C}\nd: ${A:-y}\n");
    assert_eq!(refs.get("A"), Some(&false), "required somewhere = required");
    assert_eq!(refs.get("B"), Some(&true));
    assert!(!refs.contains_key("C"), "$${{ is a literal");
}

#[test]
fn docker_compose_runs_the_gateway_with_redis_and_a_valid_config() {
    let compose: Value =
        serde_yaml::from_str(&read("docker-compose.yml")).expect("docker-compose.yml parses");
    let services = compose["services"].as_mapping().expect("services");
    for name in ["patgate", "redis", "upstream"] {
        assert!(services.contains_key(name), "service {name} missing");
    }
    let gw = &compose["services"]["patgate"];
    assert_eq!(
        gw["build"].as_str(),
        Some("."),
        "the gateway is built from this repo's Dockerfile"
    );
    let mount = seq(gw, &["volumes"])
        .iter()
        .filter_map(Value::as_str)
        .find(|v| v.ends_with("/etc/patgate/patgate.yaml:ro"))
        .expect("config mounted read-only");
    let host_file = mount.split(':').next().unwrap().trim_start_matches("./");
    let config = read(host_file);
    let mut env = BTreeMap::new();
    for (k, v) in gw["environment"].as_mapping().expect("environment") {
        env.insert(
            k.as_str().unwrap().to_owned(),
            Some(v.as_str().unwrap().to_owned()),
        );
    }
    for (var, _) in env_refs(&config) {
        env.entry(var).or_insert(None);
    }
    let (ok, out) = check_config(&config, &env);
    assert!(ok, "{host_file} with the compose environment: {out}");
    let ports: Vec<&str> = seq(gw, &["ports"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        ports.contains(&"127.0.0.1:9091:9091"),
        "admin port only on the host's loopback: {ports:?}"
    );
}

// ------------------------------------------------------------------ schema

/// A python3 that has the Kubernetes client's API types (`python3-kubernetes`).
fn python_with_k8s_schema() -> String {
    for py in ["python3", "/usr/bin/python3"] {
        let ok = Command::new(py)
            .args(["-c", "import kubernetes.client, yaml"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return py.to_string();
        }
    }
    panic!(
        "the manifest schema check needs python3 with the `kubernetes` and `yaml` modules: \
         sudo apt-get install -y python3-kubernetes python3-yaml (scripts/test installs them as root)"
    );
}

fn schema_check(files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(python_with_k8s_schema())
        .arg(root().join("scripts/k8s-schema-check.py"))
        .args(files)
        .output()
        .expect("run scripts/k8s-schema-check.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn every_manifest_matches_the_kubernetes_api_schema() {
    let mut files: Vec<PathBuf> = deploy_docs()
        .into_iter()
        .map(|(f, _)| root().join(f))
        .collect();
    files.dedup();
    let (ok, out) = schema_check(&files);
    assert!(ok, "schema check failed:\n{out}");
    let checked = out.lines().filter(|l| l.starts_with("ok ")).count();
    assert!(checked >= 10, "too few objects checked:\n{out}");
    assert!(
        out.contains("Deployment patgate matches the apps/v1 schema"),
        "{out}"
    );

    // The check can fail: a misspelt field, a string where an integer belongs and a
    // missing required field in a copy of the gateway Deployment are each reported.
    let dir = tempfile::tempdir().unwrap();
    let original = read("deploy/gateway/deployment.yaml");
    let broken = [
        (
            "readinessProbe:",
            "readinesProbe:",
            "unknown field of V1Container",
        ),
        ("replicas: 2", "replicas: \"2\"", "expected an integer"),
        (
            "containerPort:",
            "port:",
            "required field of V1ContainerPort is missing",
        ),
    ];
    for (i, (from, to, expect)) in broken.iter().enumerate() {
        assert!(original.contains(from), "deployment.yaml has no `{from}`");
        let path = dir.path().join(format!("broken{i}.yaml"));
        std::fs::write(&path, original.replacen(from, to, 1)).unwrap();
        let (ok, out) = schema_check(&[path]);
        assert!(
            !ok && out.contains(expect),
            "`{from}` -> `{to}` not caught:\n{out}"
        );
    }
}
