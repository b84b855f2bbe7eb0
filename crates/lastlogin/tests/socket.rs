//! lastlogin over its unix socket, with the transactions Dovecot's last_login plugin sends.

#![allow(clippy::indexing_slicing)]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use chatmail_mailbox::Mailboxes;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::oneshot;

struct Client {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Client {
    async fn request(&mut self, text: &str) -> String {
        self.writer.write_all(text.as_bytes()).await.unwrap();
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(10), self.reader.read_line(&mut line))
            .await
            .expect("reply within 10 s")
            .unwrap();
        line
    }
}

#[tokio::test]
async fn last_login_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let mailboxes = Mailboxes::new(dir.path().join("mail"));
    let user = mailboxes.user("abcdefghi@chat.example.org").unwrap();
    user.set_password("{SHA512-CRYPT}$6$s$h").unwrap();
    let socket = dir.path().join("lastlogin.socket");
    let listener = chatmail_dict::bind(&socket).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(lastlogin::serve(listener, mailboxes.clone(), async {
        let _ = stopped.await;
    }));

    let stream = UnixStream::connect(&socket).await.unwrap();
    let (read, writer) = stream.into_split();
    let mut client = Client {
        reader: BufReader::new(read),
        writer,
    };
    let addr = "abcdefghi@chat.example.org";
    client
        .writer
        .write_all(b"H3\t2\t0\tabcdefghi@chat.example.org\tlastlogin\n")
        .await
        .unwrap();
    let reply = client
        .request(&format!(
            "B1\t{addr}\nS1\tshared/last-login/{addr}\t200000\nC1\n"
        ))
        .await;
    assert_eq!(reply, "O\n");
    let meta = fs::metadata(user.password_path()).unwrap();
    assert_eq!((meta.mtime(), meta.atime()), (172_800, 172_800));

    // Later the same day: nothing is written (the file's ctime would change otherwise).
    let ctime = meta.ctime_nsec();
    let reply = client
        .request(&format!(
            "B2\t{addr}\nS2\tshared/last-login/{addr}\t259199\nC2\n"
        ))
        .await;
    assert_eq!(reply, "O\n");
    assert_eq!(
        fs::metadata(user.password_path()).unwrap().ctime_nsec(),
        ctime
    );

    // An account without a password file: logged, and still O, as upstream.
    let reply = client
        .request("B3\tgone@x\nS3\tshared/last-login/gone00000@chat.example.org\t1\nC3\n")
        .await;
    assert_eq!(reply, "O\n");
    assert!(!dir.path().join("mail/gone00000@chat.example.org").exists());

    // Not ours, or not applicable: F, connection kept.
    for set in [
        "S4\tshared/other/abcdefghi@chat.example.org\t1",
        "S4\tshared/last-login/abcdefghi@chat.example.org\tyesterday",
        "S4\tshared/last-login/../../etc\t1",
    ] {
        let reply = client.request(&format!("B4\t{addr}\n{set}\nC4\n")).await;
        assert_eq!(reply, "F\n", "{set}");
    }
    // Lookups and iterations are not lastlogin's business.
    assert_eq!(
        client
            .request(&format!("Lshared/last-login/{addr}\t{addr}\n"))
            .await,
        "N\n"
    );
    assert_eq!(client.request("I0\t0\tshared/last-login/\n").await, "\n");
    let meta = fs::metadata(user.password_path()).unwrap();
    assert_eq!(meta.mtime(), 172_800, "failed sets changed nothing");

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
}
