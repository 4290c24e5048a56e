//! `guests list` prints each built guest's name and path; `guests path NAME` prints one path.

use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!("usage: guests list | guests path NAME");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["list"] => {
            for g in guests::all() {
                println!("{} {}", g.name, g.path);
            }
            ExitCode::SUCCESS
        }
        ["path", name] => match guests::find(name) {
            Some(g) => {
                println!("{}", g.path);
                ExitCode::SUCCESS
            }
            None => {
                let known: Vec<&str> = guests::all().iter().map(|g| g.name).collect();
                eprintln!(
                    "guests: no guest called {name:?}; built guests: {}",
                    known.join(", ")
                );
                ExitCode::FAILURE
            }
        },
        _ => usage(),
    }
}
