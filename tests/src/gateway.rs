//! A push notification gateway on 127.0.0.1 for chatmail-metadata's `notification_url`:
//! it answers every POST with 200 and records the body (the device token).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running gateway; its thread ends with the test process.
pub struct Gateway {
    port: u16,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    pub fn start() -> Gateway {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind the push gateway");
        let port = listener.local_addr().expect("gateway address").port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let recorded = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let recorded = recorded.clone();
                std::thread::spawn(move || serve(stream, &recorded));
            }
        });
        Gateway { port, bodies }
    }

    /// The URL to put in chatmail.ini.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/notify", self.port)
    }

    pub fn bodies(&self) -> Vec<String> {
        self.bodies.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

/// Serves HTTP/1.1 requests on one connection (keep-alive) until the client closes it.
fn serve(stream: TcpStream, recorded: &Mutex<Vec<String>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if let Ok(mut bodies) = recorded.lock() {
            bodies.push(String::from_utf8_lossy(&body).into_owned());
        }
        let reply = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}
