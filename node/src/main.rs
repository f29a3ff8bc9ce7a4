//! `cairn`: the command line of the Cairn storage network.
#![allow(clippy::print_stdout)]

use std::fs::File;
use std::io::{BufReader, BufWriter, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use cairn_node::add::{self, Options};
use cairn_protocol::car::{CarReader, CarWriter};
use cairn_protocol::unixfs::NullSink;
use clap::{Parser, Subcommand};

/// Cairn: a peer-to-peer storage network with IPFS-identical content addresses.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compute the content's CID, exactly as `ipfs add --cid-version 1` would.
    ///
    /// Storing content in the network arrives with `cairn node`; today `add`
    /// needs --only-hash.
    Add {
        /// The file (or, with -r, directory) to add.
        path: PathBuf,
        /// Print the root CID without storing anything (as `ipfs add -n`).
        #[arg(short = 'n', long)]
        only_hash: bool,
        /// Add a directory and everything under it.
        #[arg(short, long)]
        recursive: bool,
        /// Include files and directories whose names start with `.`.
        #[arg(short = 'H', long)]
        hidden: bool,
    },
    /// Content archives (CAR v1), the IPFS exchange format.
    #[command(subcommand)]
    Car(CarCommand),
}

#[derive(Subcommand)]
enum CarCommand {
    /// Write a file or directory's blocks as a CAR v1 and print its root CID.
    Create {
        path: PathBuf,
        /// The CAR file to write.
        #[arg(short, long)]
        output: PathBuf,
        #[arg(short, long)]
        recursive: bool,
        #[arg(short = 'H', long)]
        hidden: bool,
    },
    /// Read a CAR v1, check every block against its CID, print its roots.
    Verify { car: PathBuf },
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Add {
            path,
            only_hash,
            recursive,
            hidden,
        } => {
            if !only_hash {
                bail!(
                    "storing in the network needs a Cairn node, which is not built yet; use --only-hash to compute the CID"
                );
            }
            let entry = add::import_path(&path, Options { recursive, hidden }, &mut NullSink)?;
            println!("{}", entry.cid);
        }
        Command::Car(CarCommand::Create {
            path,
            output,
            recursive,
            hidden,
        }) => {
            // A CAR header names its root, known only once all is hashed:
            // hash first, then write, and check nothing changed in between.
            let options = Options { recursive, hidden };
            let root = add::import_path(&path, options, &mut NullSink)?.cid;
            let file = File::create(&output)
                .with_context(|| format!("cannot create {}", output.display()))?;
            let mut car = CarWriter::new(BufWriter::new(file), &[root])?;
            let written = add::import_path(&path, options, &mut car)?.cid;
            car.finish()?.flush()?;
            if written != root {
                bail!("{} changed while it was being written", path.display());
            }
            println!("{root}");
        }
        Command::Car(CarCommand::Verify { car }) => {
            let file =
                File::open(&car).with_context(|| format!("cannot open {}", car.display()))?;
            let mut reader = CarReader::new(BufReader::new(file))?;
            let roots: Vec<String> = reader.roots().iter().map(ToString::to_string).collect();
            let mut blocks = 0u64;
            while reader
                .next_block()
                .with_context(|| format!("{} is invalid", car.display()))?
                .is_some()
            {
                blocks += 1;
            }
            println!(
                "{} blocks, every one matches its CID; roots: {}",
                blocks,
                roots.join(" ")
            );
        }
    }
    Ok(())
}
