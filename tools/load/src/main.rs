//! `mesh-load`: see `mesh_load::cli` for the commands and
//! `tools/load/README.md` for how to load-test a cluster.

use clap::Parser;

fn main() {
    let args = mesh_load::cli::Cli::parse();
    let code = match mesh_load::cli::main(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mesh-load: {e}");
            1
        }
    };
    std::process::exit(code);
}
