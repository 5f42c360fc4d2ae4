//! The command line as a whole: every argument has help, the docs' commands parse.

use super::*;
use clap::CommandFactory;

/// Every flag and positional argument of every subcommand, with its command path.
fn args(cmd: &clap::Command, path: &str, out: &mut Vec<(String, clap::Arg)>) {
    for a in cmd.get_arguments() {
        out.push((path.to_string(), a.clone()));
    }
    for sub in cmd.get_subcommands() {
        args(sub, &format!("{path} {}", sub.get_name()), out);
    }
}

#[test]
fn every_argument_has_help() {
    let mut all = Vec::new();
    args(&Cli::command(), "gandist", &mut all);
    assert!(all.len() > 40, "{} arguments", all.len());
    let missing: Vec<String> = all
        .iter()
        .filter(|(_, a)| a.get_help().is_none() && !matches!(a.get_id().as_str(), "help" | "version"))
        .map(|(p, a)| format!("{p} --{}", a.get_id()))
        .collect();
    assert!(missing.is_empty(), "arguments without help text: {missing:?}");
}

/// What docs/distributed.md tells users coming from PyTorch holds: its gandist commands
/// and flags parse, the config keys it names exist, the files it names are there.
#[test]
fn pytorch_users_section_holds() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let docs = std::fs::read_to_string(root.join("docs/distributed.md")).unwrap();
    let start = docs.find("\n## For users coming from PyTorch\n").expect("docs/distributed.md has the section");
    let section = &docs[start + 1..];
    let section = &section[..section[1..].find("\n## ").map_or(section.len(), |i| i + 1)];
    // The gandist column of the table: the second cell of each row.
    let cells: Vec<&str> = section
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| with PyTorch"))
        .filter_map(|l| l.split(" | ").nth(1))
        .collect();
    assert!(cells.len() >= 10, "{cells:?}");
    let spans: Vec<&str> = cells.iter().flat_map(|c| c.split('`').skip(1).step_by(2)).collect();
    let parse = |argv: Vec<&str>, span: &str| {
        match Cli::try_parse_from(&argv) {
            Err(e) if e.kind() != clap::error::ErrorKind::DisplayHelp => {
                panic!("docs/distributed.md: `{span}` does not parse as {argv:?}: {e}")
            }
            _ => {}
        }
    };
    let (mut commands, mut flags, mut keys, mut files) = (0, 0, 0, 0);
    let setting = |kv: &str, span: &str| {
        crate::config::Config::from_toml_str("", &[kv.to_string()])
            .unwrap_or_else(|e| panic!("docs/distributed.md: `{span}` is not a valid setting: {e:#}"));
    };
    for span in &spans {
        for path in span.split_whitespace().filter(|w| w.starts_with("launch/")) {
            assert!(root.join(path).exists(), "docs/distributed.md names {path}, which does not exist");
            files += 1;
        }
        // Commands: what follows `gandist`, up to `...`; placeholders given values.
        if let Some(at) = span.find("gandist ") {
            let mut argv: Vec<&str> = vec!["gandist"];
            argv.extend(span[at + 8..].split_whitespace().take_while(|w| *w != "..."));
            if argv.last() == Some(&"--config") {
                argv.push("c.toml");
            }
            let argv = argv.into_iter().map(|w| if w == "RUN_DIR" { "runs/x" } else { w }).collect();
            parse(argv, span);
            commands += 1;
        } else if let Some(flag) = span.strip_prefix("--").map(|_| span.split_whitespace().collect::<Vec<_>>()) {
            // A flag of `gandist train`, with its placeholder value.
            let flag = flag.into_iter().map(|w| match w {
                "FILE.toml" => "c.toml",
                "section.key=value" => "train.seed=1",
                w => w,
            });
            let mut argv = vec!["gandist", "train", "--config", "c.toml"];
            argv.extend(flag);
            if argv[4] != "--config" {
                if argv[4] == "--set" {
                    setting(argv[5], span);
                    keys += 1;
                }
                parse(argv, span);
                flags += 1;
            }
        } else if let Some((key, value)) = span.split_once(" = ") {
            setting(&format!("{key}={value}"), span);
            keys += 1;
        }
    }
    assert!(commands >= 4 && flags >= 2 && keys >= 2 && files >= 2, "found {commands} commands, {flags} flags, {keys} settings, {files} files");
}

#[test]
fn data_folder_flags_name_their_environment_variable() {
    let mut cmd = Cli::command();
    cmd.build();
    let mut all = Vec::new();
    args(&cmd, "gandist", &mut all);
    let data: Vec<_> = all.iter().filter(|(_, a)| a.get_id() == "data").collect();
    assert_eq!(data.len(), 6, "train, ablate, eval, classifier train, data fetch, data verify");
    for (path, a) in data {
        assert_eq!(a.get_env().and_then(|e| e.to_str()), Some("GANDIST_DATA"), "{path}");
    }
    let help = cmd.find_subcommand_mut("train").unwrap().render_long_help().to_string();
    assert!(help.contains("[env: GANDIST_DATA="), "{help}");
}
