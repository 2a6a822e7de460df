//! Cache benchmark: `cargo bench --bench cache` (issue 5). Work in progress.

fn main() {
    println!("cache benchmark: not implemented yet");
}
