//! `raftkv-operator`: reconciles `RaftCluster` resources (see the operator issue).

fn main() {
    eprintln!("raftkv-operator: not implemented yet");
    std::process::exit(2);
}
