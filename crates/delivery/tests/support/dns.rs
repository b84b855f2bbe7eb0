//! A UDP name server answering from a table the test fills: MX, A, AAAA records per
//! name, NXDOMAIN or SERVFAIL for a whole name; anything else is an empty NOERROR answer.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_resolver::proto::op::{Message, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, MX};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

/// What the stub knows about one name.
enum Entry {
    NxDomain,
    ServFail,
    Records(Vec<RData>),
}

/// A running stub; its task ends with the test's runtime.
pub struct DnsStub {
    pub addr: SocketAddr,
    zone: Arc<Mutex<HashMap<String, Entry>>>,
}

impl DnsStub {
    pub async fn start() -> DnsStub {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(HashMap::new()));
        let table = zone.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(buf.get(..len).unwrap_or_default()) else {
                    continue;
                };
                let answer = answer(&query, &table.lock().unwrap());
                let _ = socket.send_to(&answer.to_vec().unwrap(), peer).await;
            }
        });
        DnsStub { addr, zone }
    }

    fn add(&self, name: &str, record: RData) {
        let mut zone = self.zone.lock().unwrap();
        match zone
            .entry(name.to_owned())
            .or_insert_with(|| Entry::Records(Vec::new()))
        {
            Entry::Records(records) => records.push(record),
            _ => panic!("{name} already answers with an error"),
        }
    }

    /// MX records of `domain`: (preference, exchange); exchange "." is a null MX.
    pub fn mx(&self, domain: &str, hosts: &[(u16, &str)]) {
        for &(preference, exchange) in hosts {
            let exchange = if exchange == "." {
                Name::root()
            } else {
                Name::from_ascii(format!("{exchange}.")).unwrap()
            };
            self.add(domain, RData::MX(MX::new(preference, exchange)));
        }
    }

    /// A and AAAA records of `name`, in this order.
    pub fn ip(&self, name: &str, ips: &[IpAddr]) {
        for ip in ips {
            self.add(
                name,
                match ip {
                    IpAddr::V4(v4) => RData::A(A(*v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
                },
            );
        }
    }

    pub fn nxdomain(&self, name: &str) {
        self.zone
            .lock()
            .unwrap()
            .insert(name.to_owned(), Entry::NxDomain);
    }

    pub fn servfail(&self, name: &str) {
        self.zone
            .lock()
            .unwrap()
            .insert(name.to_owned(), Entry::ServFail);
    }
}

fn answer(query: &Message, zone: &HashMap<String, Entry>) -> Message {
    let mut response = Message::response(query.metadata.id, query.metadata.op_code);
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    let Some(question) = query.queries.first() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return response;
    };
    response.add_query(question.clone());
    let name = question.name().to_ascii().to_ascii_lowercase();
    let name = name.trim_end_matches('.');
    match zone.get(name) {
        Some(Entry::NxDomain) => response.metadata.response_code = ResponseCode::NXDomain,
        Some(Entry::ServFail) => response.metadata.response_code = ResponseCode::ServFail,
        Some(Entry::Records(records)) => {
            for record in records {
                if record.record_type() == question.query_type()
                    || question.query_type() == RecordType::ANY
                {
                    response.add_answer(Record::from_rdata(
                        question.name().clone(),
                        60,
                        record.clone(),
                    ));
                }
            }
        }
        // Unknown names do not exist.
        None => response.metadata.response_code = ResponseCode::NXDomain,
    }
    response
}
