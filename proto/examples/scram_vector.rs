//! Prints the SCRAM test vector `docs/PROTOCOL.md` shows: `cargo run -p proto --example scram_vector`.

use proto::scram::{auth_message, server_signature_of, ClientSecret};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn main() {
    let (user, password, salt, iterations) = ("alice", b"pencil", [0x11u8; 16], 4096);
    let (client_nonce, server_nonce) = (b"0123456789abcdef", b"fedcba9876543210");
    let secret = ClientSecret::derive(password, &salt, iterations);
    let stored = secret.stored();
    let am = auth_message(user, client_nonce, server_nonce, &salt, iterations);
    println!("username: {user}");
    println!("password: pencil");
    println!("salt: {}", hex(&salt));
    println!("iterations: {iterations}");
    println!("client_nonce: {}", hex(client_nonce));
    println!("server_nonce: {}", hex(server_nonce));
    println!("stored_key: {}", hex(&stored.stored_key));
    println!("server_key: {}", hex(&stored.server_key));
    println!("auth_message: {}", hex(&am));
    println!("client_proof: {}", hex(&secret.proof(&am)));
    println!(
        "server_signature: {}",
        hex(&server_signature_of(&stored.server_key, &am))
    );
}
