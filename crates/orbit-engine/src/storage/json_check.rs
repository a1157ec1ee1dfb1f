//! Checks that a stream of bytes is one JSON value, as it arrives, without keeping it: a
//! blocking `serde_json` parser reads from a channel on a blocking thread.

use super::UploadError;
use bytes::{Buf, Bytes};
use std::io::Read;
use tokio::sync::mpsc;

/// A sender of chunks and the parser's verdict. Dropping the sender ends the input; the sender
/// fails once the parser has stopped (the input is already known not to be JSON).
pub fn spawn() -> (
    mpsc::Sender<Bytes>,
    impl std::future::Future<Output = Result<(), UploadError>>,
) {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let parser = tokio::task::spawn_blocking(move || {
        let reader = ChannelReader {
            rx,
            current: Bytes::new(),
        };
        let mut de = serde_json::Deserializer::from_reader(reader);
        <serde::de::IgnoredAny as serde::Deserialize>::deserialize(&mut de)
            .and_then(|_| de.end())
            .map_err(|e| UploadError::NotJson(e.to_string()))
    });
    (tx, async move {
        parser
            .await
            .map_err(|e| UploadError::Body(format!("the JSON check stopped: {e}")))?
    })
}

struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while !self.current.has_remaining() {
            match self.rx.blocking_recv() {
                Some(next) => self.current = next,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.remaining());
        self.current.copy_to_slice(&mut buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn check(chunks: &[&str]) -> Result<(), UploadError> {
        let (tx, verdict) = spawn();
        for c in chunks {
            if tx.send(Bytes::from(c.to_string())).await.is_err() {
                break;
            }
        }
        drop(tx);
        verdict.await
    }

    #[tokio::test]
    async fn json_split_anywhere_is_json_and_anything_else_is_not() {
        assert!(check(&["{\"a\": [1, ", "2, 3]", "}"]).await.is_ok());
        assert!(check(&["\"x", "y\"", "  \n"]).await.is_ok());
        assert!(check(&["{\"a\": 1"]).await.is_err(), "cut short");
        assert!(check(&["{} {}"]).await.is_err(), "two values");
        assert!(check(&["not json", " at all"]).await.is_err());
        assert!(check(&[]).await.is_err(), "empty");
    }
}
