//! `--config FILE`: the server's options from a TOML file, under the command line.
//!
//! A setting's key is its long option without the dashes (`port = 9000`, `data-dir = "/var/lib/ns"`,
//! `data_dir` works too); its value is what the option takes: a string, a number, a boolean
//! for a switch, an array for a list. Precedence: the command line, then the file, then the
//! built-in default. The file is turned into options and parsed by the same clap definition
//! as the command line, so a value is checked, and refused, exactly as it would be there, and
//! `uring-server print-config` prints every setting with its default (`contrib/uring-server.toml`
//! is that output).

use std::ffi::OsString;
use std::path::Path;

use anyhow::{anyhow, Context};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches};

use crate::cli::Args;

/// Options that make no sense in a file: the file itself, and clap's own.
const NOT_SETTINGS: &[&str] = &["config", "help", "version"];

/// Parses `argv` (program name first) with the settings of the `--config` file it names, if
/// any, under it. A command-line error exits as clap does; a bad file is an error naming it.
pub fn parse(argv: Vec<OsString>) -> anyhow::Result<Args> {
    let matches = Args::command()
        .try_get_matches_from(&argv)
        .unwrap_or_else(|e| e.exit());
    let Some(path) = matches.get_one::<std::path::PathBuf>("config") else {
        return Ok(Args::from_arg_matches(&matches)?);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    merge(argv, &matches, path, &text)
}

/// [`parse`] once the file is read: the file's settings become options placed before the
/// command line's, leaving out those the command line gives (so each option comes once).
fn merge(
    argv: Vec<OsString>,
    matches: &ArgMatches,
    path: &Path,
    text: &str,
) -> anyhow::Result<Args> {
    let at = |what: String| anyhow!("config file {}: {what}", path.display());
    let table: toml::Table = text.parse().map_err(|e| at(format!("not TOML: {e}")))?;
    let cmd = Args::command();
    let mut from_file = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && !NOT_SETTINGS.contains(&long.as_str()))
            .ok_or_else(|| {
                at(format!(
                    "unknown setting {key:?} (settings are the long options: uring-server print-config lists them)"
                ))
            })?;
        let id = arg.get_id().as_str();
        if matches.value_source(id) == Some(ValueSource::CommandLine) {
            continue;
        }
        let switch = matches!(arg.get_action(), ArgAction::SetTrue);
        match (value, switch) {
            (toml::Value::Boolean(on), true) => {
                if *on {
                    from_file.push(OsString::from(format!("--{long}")));
                }
            }
            (_, true) => return Err(at(format!("{key} is a switch: true or false"))),
            (v, false) => {
                let v = scalar(v).or_else(|| match v {
                    toml::Value::Array(items) => items
                        .iter()
                        .map(scalar)
                        .collect::<Option<Vec<_>>>()
                        .map(|parts| parts.join(",")),
                    _ => None,
                });
                let Some(v) = v else {
                    return Err(at(format!(
                        "{key}: a string, number, boolean or array of them"
                    )));
                };
                from_file.push(OsString::from(format!("--{long}={v}")));
            }
        }
    }
    let mut all = Vec::with_capacity(argv.len() + from_file.len());
    let mut argv = argv.into_iter();
    all.extend(argv.next());
    all.extend(from_file);
    all.extend(argv);
    // The command line alone parsed, so an error now is the file's.
    let merged = Args::command()
        .try_get_matches_from(all)
        .map_err(|e| at(e.render().to_string().trim_end().to_string()))?;
    Ok(Args::from_arg_matches(&merged)?)
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Every setting a config file may hold, each with its help as a comment and its default
/// (commented out where it has none): what `uring-server print-config` prints.
pub fn template() -> String {
    let cmd = Args::command();
    let mut out = String::from(
        "# uring-server configuration: `uring-server --config FILE`. Every key is a long option\n\
         # (see `uring-server --help`); the command line overrides the file, the file the\n\
         # defaults shown. Generated by `uring-server print-config`.\n",
    );
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if NOT_SETTINGS.contains(&long) {
            continue;
        }
        out.push('\n');
        let help = arg
            .get_long_help()
            .or_else(|| arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        for line in wrap(&help, 94) {
            out.push_str("# ");
            out.push_str(&line);
            out.push('\n');
        }
        let values: Vec<String> = arg
            .get_possible_values()
            .iter()
            .map(|v| v.get_name().to_string())
            .collect();
        if !values.is_empty() {
            out.push_str(&format!("# one of: {}\n", values.join(", ")));
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let switch = matches!(arg.get_action(), ArgAction::SetTrue);
        let line = if switch {
            format!("{long} = false")
        } else if let [one] = defaults.as_slice() {
            format!("{long} = {}", toml_value(one))
        } else {
            format!("# {long} = (no default)")
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// A default as TOML: a number stays a number, anything else is a string.
fn toml_value(v: &str) -> String {
    if v.parse::<i64>().is_ok() {
        v.to_string()
    } else {
        toml::Value::String(v.to_string()).to_string()
    }
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for para in text.split('\n') {
        let mut line = String::new();
        for word in para.split_whitespace() {
            if !line.is_empty() && line.len() + 1 + word.len() > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Durability, Registration};

    fn args_of(cli: &[&str], file: &str) -> anyhow::Result<Args> {
        let argv: Vec<OsString> = std::iter::once("uring-server")
            .chain(cli.iter().copied())
            .map(OsString::from)
            .collect();
        let matches = Args::command().try_get_matches_from(&argv)?;
        merge(argv, &matches, Path::new("test.toml"), file)
    }

    #[test]
    fn the_command_line_wins_over_the_file_and_the_file_over_the_defaults() {
        let file = "port = 1234\nworkers = 3\ndata_dir = \"/tmp/x\"\nregistration = \"closed\"\n";
        let a = args_of(&["--port", "99"], file).expect("merge");
        assert_eq!(a.port, 99, "the command line wins");
        assert_eq!(
            a.workers,
            Some(3),
            "the file fills what the command line left"
        );
        assert_eq!(
            a.data_dir,
            std::path::PathBuf::from("/tmp/x"),
            "snake_case keys too"
        );
        assert_eq!(a.registration, Registration::Closed);
        assert_eq!(
            a.durability,
            Durability::Sync,
            "the default where neither says"
        );
        // `--port=99` and a subcommand after the options are the command line too.
        let b = args_of(&["--port=99", "stats"], file).expect("merge");
        assert_eq!((b.port, b.workers), (99, Some(3)));
        assert!(b.command.is_some());
    }

    #[test]
    fn switches_lists_and_the_global_name_come_from_the_file() {
        let file = "journal-truncate-corrupt = true\ntls12 = false\n\
                    cluster = [\"nats://127.0.0.1:1\", \"nats://127.0.0.1:2\"]\nname = \"prod\"\n";
        let a = args_of(&[], file).expect("merge");
        assert!(a.journal_truncate_corrupt);
        assert!(!a.tls12);
        assert_eq!(a.cluster, ["nats://127.0.0.1:1", "nats://127.0.0.1:2"]);
        assert_eq!(a.name, "prod");
        let b = args_of(&["--name", "test", "--cluster", "nats://h:3"], file).expect("merge");
        assert_eq!(
            (b.name.as_str(), b.cluster.as_slice()),
            ("test", &["nats://h:3".to_string()][..])
        );
    }

    #[test]
    fn a_bad_file_is_refused_with_its_name_and_the_key() {
        let err = |file: &str| args_of(&[], file).expect_err(file).to_string();
        let e = err("prot = 9000");
        assert!(e.contains("test.toml") && e.contains("\"prot\""), "{e}");
        let e = err("port = \"high\"");
        assert!(e.contains("test.toml") && e.contains("high"), "{e}");
        let e = err("port = 70000");
        assert!(e.contains("test.toml") && e.contains("70000"), "{e}");
        let e = err("tls12 = \"yes\"");
        assert!(e.contains("switch"), "{e}");
        let e = err("port = { a = 1 }");
        assert!(e.contains("port"), "{e}");
        let e = err("config = \"other.toml\"");
        assert!(e.contains("unknown setting"), "{e}");
        let e = err("port = ");
        assert!(e.contains("not TOML"), "{e}");
        // A file value that conflicts with itself is the file's error, named as such.
        let e = err("tls-key = \"k.pem\"");
        assert!(e.contains("test.toml"), "{e}");
    }

    #[test]
    fn the_template_lists_every_setting_and_parses_back_to_the_defaults() {
        let t = template();
        for arg in Args::command().get_arguments() {
            if let Some(long) = arg.get_long() {
                if !NOT_SETTINGS.contains(&long) {
                    assert!(
                        t.contains(&format!("\n{long} = ")) || t.contains(&format!("# {long} = ")),
                        "{long}"
                    );
                }
            }
        }
        let from_template = args_of(&[], &t).expect("the template parses");
        let defaults = args_of(&[], "").expect("defaults");
        assert_eq!(format!("{from_template:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn the_checked_in_example_is_the_template() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../contrib/uring-server.toml");
        if std::env::var_os("NS_BLESS").is_some() {
            std::fs::write(path, template()).expect("write the example");
        }
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in == template(),
            "{path} is stale: regenerate it with NS_BLESS=1 cargo test -p uring-server --lib config"
        );
    }
}
