//! `pal-testhost`'s `http-dir:ADDR:DIR` mode on loopback (no root): serves
//! regular files under DIR, nothing outside it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};

struct Host(Child);

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(port: u16, path: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&out[..split]).to_string();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = out[split + 4..].to_vec();
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
    {
        assert_eq!(len.parse::<usize>().unwrap(), body.len());
    }
    (status, body)
}

#[test]
fn http_dir_serves_files_under_dir_only() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("repo");
    std::fs::create_dir_all(dir.join("metadata")).unwrap();
    std::fs::write(dir.join("metadata/timestamp.json"), b"{\"x\":1}").unwrap();
    std::fs::write(t.path().join("secret"), b"outside").unwrap();
    std::os::unix::fs::symlink(t.path().join("secret"), dir.join("escape")).unwrap();
    std::os::unix::fs::symlink(dir.join("metadata/timestamp.json"), dir.join("inside")).unwrap();

    // A free loopback port (released just before the host binds it).
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_pal-testhost"))
        .args(["serve", "--log"])
        .arg(t.path().join("log"))
        .arg(format!("http-dir:127.0.0.1:{port}:{}", dir.display()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut host = Host(child);
    let mut line = String::new();
    BufReader::new(host.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");

    assert_eq!(
        get(port, "/metadata/timestamp.json"),
        (200, b"{\"x\":1}".to_vec())
    );
    assert_eq!(get(port, "/inside").0, 200, "a symlink staying inside DIR");
    for bad in [
        "/missing",
        "/metadata",
        "/metadata/",
        "/",
        "/../secret",
        "/metadata/../../secret",
        "/escape",
        "/%2e%2e/secret",
        "//etc/passwd",
    ] {
        let (status, body) = get(port, bad);
        assert_eq!(status, 404, "{bad}");
        assert!(body.is_empty(), "{bad}");
    }
    let log = std::fs::read_to_string(t.path().join("log")).unwrap();
    assert!(log.contains("http-dir 127.0.0.1:"), "{log}");
    assert!(log.contains(" 200 /metadata/timestamp.json"), "{log}");
}
