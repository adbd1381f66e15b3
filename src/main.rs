fn main() {
    println!("focalflow");
}
