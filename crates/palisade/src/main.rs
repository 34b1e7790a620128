use std::io::{self, BufWriter, Write};
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use palisade::cli::{BenchCommand, Cli, Command};
use palisade::input::{Failure, Ui};

fn run(cli: Cli, ui: &Ui, out: &mut dyn Write) -> anyhow::Result<()> {
    match cli.command {
        Command::Analyze(args) => palisade::commands::analyze::run(&args, ui, out),
        Command::Explain(args) => palisade::commands::explain::run(&args, ui, out),
        Command::Lint(args) => palisade::commands::lint::run(&args, ui, out),
        Command::Diff(args) => palisade::commands::diff::run(&args, ui, out),
        Command::Lab(cmd) => palisade::commands::lab::run(cmd, ui, out),
        Command::Agent(args) => palisade::commands::agent::run(&args),
        Command::Bench(BenchCommand::Gen(g)) => {
            let spec =
                palisade::gen::Spec { namespaces: g.namespaces, pods: g.pods, policies: g.policies, seed: g.seed };
            out.write_all(palisade::gen::generate(&spec).as_bytes())?;
            Ok(())
        }
        Command::Bench(BenchCommand::Engine(g)) => palisade::commands::bench::run(&g, out),
        Command::Bench(BenchCommand::Analyze(args)) => palisade::commands::bench_analyze::run(&args, out),
        Command::Bench(BenchCommand::Dataplane(args)) => palisade::commands::bench_dataplane::run(&args, out),
        Command::Bench(BenchCommand::Agent(args)) => palisade::commands::bench_agent::run(&args, out),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "palisade", out);
            Ok(())
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(out)?;
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    // One binary: invoked as `palisade-cni` (a symlink in a CNI_PATH
    // directory) it is the CNI plugin.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&argv0).file_name().is_some_and(|n| n == "palisade-cni") {
        palisade_cni::main();
    }
    let cli = Cli::parse();
    let ui = Ui::new();
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let result = run(cli, &ui, &mut out);
    // Output first, then the verdict about it.
    let flushed = out.flush();
    let result = result.and_then(|()| flushed.map_err(Into::into));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A closed pipe (`palisade analyze | head`) is not an error.
            if e.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe) {
                return ExitCode::SUCCESS;
            }
            match e.downcast_ref::<Failure>() {
                Some(Failure::Findings(msg)) => {
                    ui.error(msg);
                    ExitCode::from(1)
                }
                Some(Failure::Input(msg)) | Some(Failure::Usage(msg)) => {
                    ui.error(msg);
                    ExitCode::from(2)
                }
                None => {
                    ui.error(&format!("{e:#}"));
                    ExitCode::from(2)
                }
            }
        }
    }
}
