//! The `raftkv` binary.

fn main() {
    eprintln!("raftkv: the node process is not implemented yet");
    std::process::exit(2);
}
