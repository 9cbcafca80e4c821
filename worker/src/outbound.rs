//! The `BeamFnData/Data` call with a request body of our own, so that output
//! payloads reach HTTP/2 without being copied.
//!
//! tonic's generated client encodes every outbound message with prost into
//! one contiguous buffer: each output payload (`Bytes` that already hold the
//! encoded elements) is copied once more, and the buffer reallocates as it
//! grows. Here the gRPC frame of an `Elements` message is written as a few
//! small header pieces around the payloads themselves, and h2 sends large
//! payloads straight from their own buffers (it chains them behind the frame
//! head). The response side stays tonic's decoder.
//!
//! The bytes on the wire are exactly prost's encoding of the same message
//! behind the usual 5-byte gRPC prefix; the tests check that.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use beam_proto::fn_execution::{Elements, elements};
use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use prost::Message;
use prost::encoding::encode_varint;
use tokio::sync::{mpsc, oneshot};
use tonic::client::GrpcService;
use tonic::codec::{Codec, Streaming};
use tonic::codegen::http;

/// The method path of the runner's data service.
const DATA_PATH: &str = "/org.apache.beam.model.fn_execution.v1.BeamFnData/Data";

/// Payloads shorter than this are copied into the surrounding header piece:
/// a separate piece would become its own HTTP/2 DATA frame, which h2 writes
/// with a system call of its own, costing more than copying it. 16 KiB is
/// HTTP/2's default (and usual) largest frame.
const CHAIN_FROM: usize = 16 * 1024;

/// Room the header buffer reserves at a time; small messages (one element,
/// `is_last` markers) share one allocation until it is used up.
const HEADER_BLOCK: usize = 8 * 1024;

/// Protobuf keys (field number << 3 | wire type) of the fields written here.
mod key {
    /// `Elements.data`, `Data.instruction_id`: field 1, length-delimited.
    pub const FIELD_1_BYTES: u8 = (1 << 3) | 2;
    /// `Data.transform_id`: field 2, length-delimited.
    pub const FIELD_2_BYTES: u8 = (2 << 3) | 2;
    /// `Data.data`: field 3, length-delimited.
    pub const FIELD_3_BYTES: u8 = (3 << 3) | 2;
    /// `Data.is_last`: field 4, varint.
    pub const FIELD_4_VARINT: u8 = 4 << 3;
}

/// One outbound message, and who waits for the transport to take it.
pub struct Outgoing {
    pub elements: Elements,
    pub taken: Option<oneshot::Sender<()>>,
}

/// Writes gRPC frames of `Elements` messages as pieces that share the
/// payloads' buffers.
#[derive(Default)]
pub struct Framer {
    /// Where field headers and small payloads are gathered; split off into a
    /// piece whenever a large payload follows, so nothing is copied twice.
    head: BytesMut,
}

impl Framer {
    /// Appends the gRPC frame (5-byte prefix and protobuf body) of `message`
    /// to `pieces`. Concatenated, the pieces are the frame.
    pub fn frame(&mut self, message: &Elements, pieces: &mut VecDeque<Bytes>) {
        let len = message.encoded_len();
        self.reserve(5);
        self.head.put_u8(0); // not compressed
        // A message over 4 GiB cannot be framed by gRPC at all; the sink
        // flushes long before (its thresholds are megabytes).
        self.head.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
        for data in &message.data {
            self.data_entry(data, pieces);
        }
        for timers in &message.timers {
            // Never sent by this worker's operators; small, so prost writes them.
            self.reserve(timers.encoded_len() + 10);
            prost::encoding::message::encode(2, timers, &mut self.head);
        }
        self.cut(pieces);
    }

    fn data_entry(&mut self, data: &elements::Data, pieces: &mut VecDeque<Bytes>) {
        // Keys and varints of every field: well under 64 bytes.
        self.reserve(64 + data.instruction_id.len() + data.transform_id.len());
        self.head.put_u8(key::FIELD_1_BYTES);
        encode_varint(data.encoded_len() as u64, &mut self.head);
        self.string_field(key::FIELD_1_BYTES, data.instruction_id.as_bytes());
        self.string_field(key::FIELD_2_BYTES, data.transform_id.as_bytes());
        if !data.data.is_empty() {
            self.head.put_u8(key::FIELD_3_BYTES);
            encode_varint(data.data.len() as u64, &mut self.head);
            if data.data.len() < CHAIN_FROM {
                self.reserve(data.data.len() + 2);
                self.head.put_slice(&data.data);
            } else {
                self.cut(pieces);
                pieces.push_back(data.data.clone());
            }
        }
        if data.is_last {
            self.reserve(2);
            self.head.put_u8(key::FIELD_4_VARINT);
            self.head.put_u8(1);
        }
    }

    /// A length-delimited field, left out when empty as proto3 does.
    fn string_field(&mut self, key: u8, value: &[u8]) {
        if value.is_empty() {
            return;
        }
        self.head.put_u8(key);
        encode_varint(value.len() as u64, &mut self.head);
        self.head.put_slice(value);
    }

    /// Ends the current header piece (if it holds anything).
    fn cut(&mut self, pieces: &mut VecDeque<Bytes>) {
        if !self.head.is_empty() {
            pieces.push_back(self.head.split().freeze());
        }
    }

    /// Makes room for `n` more bytes in whole blocks, so the buffer is
    /// reallocated rarely and pieces already cut stay where they are.
    fn reserve(&mut self, n: usize) {
        if self.head.capacity() - self.head.len() < n {
            self.head.reserve(n.max(HEADER_BLOCK));
        }
    }
}

/// The request body of the data call: queued messages, framed by
/// [`Framer`], one piece at a time.
///
/// A message counts as taken by the transport once its last piece is handed
/// out: hyper passes every piece it gets on to h2's send queue (waiting for
/// send capacity first if it has none), and nothing here can lose it after
/// that. That is what lets a bundle send its response only once all its
/// output is on its way; acknowledging at hand-out rather than on the next
/// poll lets the bundle go on while hyper waits for capacity, instead of a
/// thread wake-up later. Pieces are asked for only as HTTP/2 flow control
/// allows, so at most one message beyond the queue is held here.
pub struct OutboundBody {
    rx: mpsc::Receiver<Outgoing>,
    framer: Framer,
    /// Pieces of the message being sent, in order.
    pieces: VecDeque<Bytes>,
    /// Acknowledgement of the message whose pieces are in `pieces`.
    taken: Option<oneshot::Sender<()>>,
    /// Dropped once the worker's side has ended (or the transport dropped
    /// the body): then nothing queued is left to send.
    done: Option<oneshot::Sender<()>>,
}

impl OutboundBody {
    pub fn new(rx: mpsc::Receiver<Outgoing>, done: oneshot::Sender<()>) -> Self {
        Self {
            rx,
            framer: Framer::default(),
            pieces: VecDeque::new(),
            taken: None,
            done: Some(done),
        }
    }
}

impl http_body::Body for OutboundBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        if this.pieces.is_empty() {
            match ready!(this.rx.poll_recv(cx)) {
                Some(out) => {
                    this.framer.frame(&out.elements, &mut this.pieces);
                    this.taken = out.taken;
                }
                None => {
                    this.done = None;
                    return Poll::Ready(None);
                }
            }
        }
        // A frame always has its 5-byte prefix, so there is a piece.
        let Some(piece) = this.pieces.pop_front() else {
            return Poll::Ready(None);
        };
        if this.pieces.is_empty()
            && let Some(taken) = this.taken.take()
        {
            let _ = taken.send(());
        }
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.done.is_none() && self.pieces.is_empty()
    }
}

/// Opens the data call on `channel` with `body` as the request stream and
/// tonic's decoder on the response, as the generated client would.
pub async fn data_call<T>(
    channel: &mut T,
    body: OutboundBody,
) -> Result<Streaming<Elements>, tonic::Status>
where
    T: GrpcService<tonic::body::Body>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError>,
{
    let request = http::Request::builder()
        .method(http::Method::POST)
        .version(http::Version::HTTP_2)
        .uri(DATA_PATH)
        .header(http::header::TE, "trailers")
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(tonic::body::Body::new(body))
        .map_err(|e| tonic::Status::internal(format!("data call request: {e}")))?;
    std::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .map_err(|e| tonic::Status::from_error(e.into()))?;
    let response = channel
        .call(request)
        .await
        .map_err(|e| tonic::Status::from_error(e.into()))?;
    // A call refused at once comes back as headers only, its status among them.
    if let Some(status) = tonic::Status::from_header_map(response.headers())
        && status.code() != tonic::Code::Ok
    {
        return Err(status);
    }
    let status = response.status();
    let decoder = tonic_prost::ProstCodec::<Elements, Elements>::default().decoder();
    Ok(Streaming::new_response(
        decoder,
        response.into_body(),
        status,
        None,
        Some(usize::MAX),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use beam_proto::fn_execution::elements::Timers;

    fn entry(instruction: &str, transform: &str, data: Bytes, is_last: bool) -> elements::Data {
        elements::Data {
            instruction_id: instruction.into(),
            transform_id: transform.into(),
            data,
            is_last,
        }
    }

    /// What tonic's generated client would put on the wire for `message`.
    fn prost_frame(message: &Elements) -> Vec<u8> {
        let body = message.encode_to_vec();
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        frame
    }

    fn framed(framer: &mut Framer, message: &Elements) -> (Vec<u8>, VecDeque<Bytes>) {
        let mut pieces = VecDeque::new();
        framer.frame(message, &mut pieces);
        (
            pieces.iter().flat_map(|p| p.iter().copied()).collect(),
            pieces,
        )
    }

    fn pattern(n: usize) -> Bytes {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn frames_match_prost_byte_for_byte() {
        let big = pattern(3 * CHAIN_FROM + 7);
        let messages = [
            Elements::default(),
            Elements {
                data: vec![entry("1", "sink", Bytes::new(), true)],
                timers: vec![],
            },
            Elements {
                data: vec![entry("", "", Bytes::new(), false)],
                timers: vec![],
            },
            Elements {
                data: vec![
                    entry("bundle-7", "out", pattern(125), false),
                    entry("bundle-8", "out", big.clone(), false),
                    entry("bundle-8", "out", pattern(CHAIN_FROM - 1), false),
                    entry("bundle-8", "out", pattern(CHAIN_FROM), false),
                    entry("bundle-8", "out", Bytes::new(), true),
                ],
                timers: vec![],
            },
            Elements {
                data: vec![entry(
                    &"i".repeat(300),
                    &"t".repeat(200),
                    pattern(1 << 20),
                    true,
                )],
                timers: vec![Timers {
                    instruction_id: "1".into(),
                    transform_id: "t".into(),
                    timer_family_id: "f".into(),
                    timers: pattern(10),
                    is_last: true,
                }],
            },
        ];
        let mut framer = Framer::default();
        for message in &messages {
            let (bytes, _) = framed(&mut framer, message);
            assert_eq!(bytes, prost_frame(message), "{message:?}");
        }
    }

    #[test]
    fn large_payloads_are_shared_not_copied() {
        let big = pattern(CHAIN_FROM);
        let small = pattern(100);
        let message = Elements {
            data: vec![
                entry("1", "out", small.clone(), false),
                entry("1", "out", big.clone(), false),
                entry("1", "out", Bytes::new(), true),
            ],
            timers: vec![],
        };
        let (_, pieces) = framed(&mut Framer::default(), &message);
        assert_eq!(pieces.len(), 3, "header+small, large, tail");
        assert_eq!(pieces[1].as_ptr(), big.as_ptr(), "the large payload itself");
        assert!(!pieces.iter().any(|p| p.as_ptr() == small.as_ptr()));
    }

    #[tokio::test]
    async fn body_acknowledges_a_message_when_its_last_piece_is_handed_out() {
        use http_body::Body as _;
        use http_body_util::BodyExt;
        let (tx, rx) = mpsc::channel(4);
        let (done_tx, mut done_rx) = oneshot::channel();
        let mut body = OutboundBody::new(rx, done_tx);
        let (taken_tx, mut taken_rx) = oneshot::channel();
        let message = Elements {
            data: vec![
                entry("1", "out", pattern(CHAIN_FROM), false),
                entry("1", "out", Bytes::new(), true),
            ],
            timers: vec![],
        };
        let expected = prost_frame(&message);
        tx.send(Outgoing {
            elements: message,
            taken: Some(taken_tx),
        })
        .await
        .unwrap();
        drop(tx);
        let mut sent = Vec::new();
        for piece in 0..3 {
            let frame = body.frame().await.unwrap().unwrap();
            sent.extend_from_slice(&frame.into_data().unwrap());
            if piece < 2 {
                assert!(taken_rx.try_recv().is_err(), "acknowledged too early");
            }
        }
        assert_eq!(
            taken_rx.try_recv(),
            Ok(()),
            "acknowledged with its last piece"
        );
        assert!(body.frame().await.is_none(), "the stream ends");
        assert_eq!(sent, expected);
        assert_eq!(
            done_rx.try_recv(),
            Err(oneshot::error::TryRecvError::Closed),
            "done is dropped at the end"
        );
        assert!(body.is_end_stream());
    }
}
