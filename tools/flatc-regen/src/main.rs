//! Regenerates the Rust code for every `client/schemas/*.fbs` of the ringmq
//! repository with a pinned flatc, built from source by the `flatc` crate.
//!
//! Usage: `flatc-regen [OUT_DIR]` (default `client/src/wire/generated`). A relative
//! `OUT_DIR` is resolved against the repository root, which is two levels up
//! from this tool's manifest directory. Normally run via
//! `tools/regen-schemas.sh`, which also formats the output and implements
//! `--check`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Must match the `flatbuffers` crate version used by ringmq.
const EXPECTED_VERSION: &str = "flatc version 23.5.26";
const DEFAULT_OUT_DIR: &str = "client/src/wire/generated";
/// The crate that holds the schemas (in `schemas/`) and their code.
const SCHEMA_CRATE_DIR: &str = "client";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("flatc-regen: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn repo_root() -> Result<PathBuf, String> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.join("..").join("..");
    root.canonicalize()
        .map_err(|e| format!("cannot resolve repository root {}: {e}", root.display()))
}

fn run() -> Result<(), String> {
    let mut args = std::env::args_os().skip(1);
    let out_arg = args.next();
    if args.next().is_some() {
        return Err("usage: flatc-regen [OUT_DIR]".to_string());
    }
    if out_arg
        .as_deref()
        .is_some_and(|a| a == "-h" || a == "--help")
    {
        println!("usage: flatc-regen [OUT_DIR]   (default: {DEFAULT_OUT_DIR}, relative to the repo root)");
        return Ok(());
    }

    let root = repo_root()?;
    let out_dir = {
        let p = PathBuf::from(out_arg.unwrap_or_else(|| DEFAULT_OUT_DIR.into()));
        if p.is_absolute() {
            p
        } else {
            root.join(p)
        }
    };

    let flatc = flatc::flatc();
    if !flatc.is_file() {
        return Err(format!("flatc binary not found at {}", flatc.display()));
    }
    check_version(flatc)?;

    let crate_dir = root.join(SCHEMA_CRATE_DIR);
    let schemas = find_schemas(&crate_dir)?;

    std::fs::create_dir_all(&out_dir)
        .map_err(|e| format!("cannot create output directory {}: {e}", out_dir.display()))?;

    // Run from the schemas' crate with crate-relative schema paths so that
    // nothing about this machine's layout can leak into the output.
    let mut cmd = Command::new(flatc);
    cmd.current_dir(&crate_dir)
        .arg("--rust")
        .arg("--gen-all")
        .arg("-I")
        .arg("schemas")
        .arg("-o")
        .arg(&out_dir)
        .args(&schemas);
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {}: {e}", flatc.display()))?;
    if !status.success() {
        return Err(format!(
            "flatc failed ({status}) while compiling {}",
            schemas
                .iter()
                .map(|s| s.display().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }

    for s in &schemas {
        eprintln!("flatc-regen: compiled {}", s.display());
    }
    eprintln!("flatc-regen: output in {}", out_dir.display());
    Ok(())
}

fn check_version(flatc: &Path) -> Result<(), String> {
    let out = Command::new(flatc)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {} --version: {e}", flatc.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} --version failed ({})",
            flatc.display(),
            out.status
        ));
    }
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if version != EXPECTED_VERSION {
        return Err(format!(
            "{} reports {version:?}, expected {EXPECTED_VERSION:?}; \
             generated code must match the flatbuffers crate version",
            flatc.display()
        ));
    }
    eprintln!("flatc-regen: {version}");
    Ok(())
}

/// `schemas/*.fbs` relative to `root` (the schemas' crate), sorted for a
/// stable order.
fn find_schemas(root: &Path) -> Result<Vec<PathBuf>, String> {
    let dir = root.join("schemas");
    let entries = std::fs::read_dir(&dir)
        .map_err(|e| format!("cannot read schema directory {}: {e}", dir.display()))?;
    let mut schemas = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let name = entry.file_name();
        let path = Path::new(&name);
        if path.extension().is_some_and(|ext| ext == "fbs") && entry.path().is_file() {
            schemas.push(Path::new("schemas").join(path));
        }
    }
    schemas.sort();
    if schemas.is_empty() {
        return Err(format!("no *.fbs files in {}", dir.display()));
    }
    Ok(schemas)
}
