//! Progress of kmmctl's long steps on large images (compressing a layer,
//! pulling and pushing blobs) as bars on stderr, for the person at the
//! terminal: a GPU driver image of hundreds of MiB takes minutes. Drawn only
//! when stderr is a terminal and the step moves at least [`MIN_BYTES`]; logs
//! (and CI output) stay as they are, each step's end logged as before.

use std::io::IsTerminal;
use std::pin::Pin;
use std::task::{Context, Poll};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Steps moving fewer bytes end too soon for a bar to help.
pub const MIN_BYTES: u64 = 8 << 20;

/// Bytes handed to the compressor or the HTTP client at a time: the bar moves
/// this often (and the upload stream's items are this large).
pub const CHUNK: usize = 1 << 20;

/// A byte counter of one step, drawn as a bar where it helps.
#[derive(Debug, Clone)]
pub struct Progress(ProgressBar);

impl Progress {
    /// A step moving `total` bytes, named `what` ("compressing layer", …).
    pub fn bytes(what: &str, total: u64) -> Self {
        let shown = total >= MIN_BYTES && std::io::stderr().is_terminal();
        let target = if shown {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_string());
        Self(bar)
    }

    /// `n` more bytes done.
    pub fn inc(&self, n: u64) {
        self.0.inc(n);
    }

    /// Bytes done so far.
    pub fn done(&self) -> u64 {
        self.0.position()
    }

    /// Removes the bar (the step logs its own end).
    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// `data` as a stream of [`CHUNK`]-byte pieces for an upload, counting each
/// piece into `progress` as the HTTP client takes it.
pub fn upload_stream<E: Send + 'static>(
    data: &[u8],
    progress: Progress,
) -> impl futures::Stream<Item = Result<bytes::Bytes, E>> + Send + 'static + use<E> {
    let data = bytes::Bytes::copy_from_slice(data);
    let pieces: Vec<bytes::Bytes> = (0..data.len())
        .step_by(CHUNK)
        .map(|start| data.slice(start..(start + CHUNK).min(data.len())))
        .collect();
    futures::stream::iter(pieces.into_iter().map(move |piece| {
        progress.inc(piece.len() as u64);
        Ok(piece)
    }))
}

/// An async writer that counts what passes through it into a [`Progress`].
pub struct Counting<W> {
    inner: W,
    progress: Progress,
}

impl<W> Counting<W> {
    /// Counts writes to `inner` into `progress`.
    pub fn new(inner: W, progress: Progress) -> Self {
        Self { inner, progress }
    }

    /// The writer, once done.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counting<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            this.progress.inc(*n as u64);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn an_upload_is_counted_piece_by_piece_as_it_is_taken() {
        let data = vec![7u8; 2 * CHUNK + 5];
        let progress = Progress::bytes("pushing layer", data.len() as u64);
        let mut stream = Box::pin(upload_stream::<std::io::Error>(&data, progress.clone()));
        assert_eq!(
            progress.done(),
            0,
            "nothing counted before the client takes it"
        );
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!((first.len(), progress.done()), (CHUNK, CHUNK as u64));
        let rest: Vec<bytes::Bytes> = stream.map(Result::unwrap).collect().await;
        let sent: Vec<u8> = std::iter::once(first).chain(rest).flatten().collect();
        assert_eq!(sent, data, "the stream carries the blob unchanged");
        assert_eq!(progress.done(), data.len() as u64);
    }

    #[tokio::test]
    async fn a_download_is_counted_as_it_is_written() {
        let progress = Progress::bytes("pulling layer", 10);
        let mut out = Counting::new(Vec::new(), progress.clone());
        out.write_all(b"0123456789").await.unwrap();
        assert_eq!(progress.done(), 10);
        assert_eq!(out.inner, b"0123456789");
    }
}
