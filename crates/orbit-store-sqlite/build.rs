// A new migration file must rebuild the crate that embeds the migrations (`sqlx::migrate!`).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
