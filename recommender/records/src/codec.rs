//! The gRPC codec of `leash.v1`: prost messages, decoded from one contiguous slice.
//!
//! tonic hands a decoder the whole message in one contiguous buffer, but prost decoding
//! through the `Buf` trait moves a shared buffer's cursor for every field it reads, which is
//! a large part of decoding a batch of thousands of small records. Decoding from the slice
//! itself only moves a pointer. Encoding is tonic-prost's, unchanged; the bytes on the wire
//! are the same either way.

use std::marker::PhantomData;

use prost::{DecodeError, Message, bytes::Buf};
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::ProstEncoder;

use crate::error::Chain;

/// A [`Codec`] for prost messages that decodes from a contiguous slice (see the module docs).
/// The generated `leash.v1` client and server use it in place of `tonic_prost::ProstCodec`.
#[derive(Debug, Clone, Copy)]
pub struct SliceCodec<T, U> {
    _messages: PhantomData<(T, U)>,
}

impl<T, U> Default for SliceCodec<T, U> {
    fn default() -> Self {
        SliceCodec {
            _messages: PhantomData,
        }
    }
}

impl<T, U> Codec for SliceCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = SliceDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        SliceDecoder {
            _message: PhantomData,
        }
    }
}

/// Decodes one prost message from the contiguous bytes tonic buffered for it.
#[derive(Debug, Clone, Copy)]
pub struct SliceDecoder<U> {
    _message: PhantomData<U>,
}

impl<U: Message + Default> Decoder for SliceDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // INTERNAL with prost's message, as tonic-prost reports a message that does not parse
        // (the gRPC convention; ingest maps it to INVALID_ARGUMENT for agents).
        decode_all(buf)
            .map(Some)
            .map_err(|e| Status::internal(Chain(&e).to_string()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// Decodes everything `buf` holds as one `U`: from its first chunk when that is all of it,
/// else from one gathered copy.
fn decode_all<U: Message + Default>(buf: &mut impl Buf) -> Result<U, DecodeError> {
    let len = buf.remaining();
    if buf.chunk().len() == len {
        let decoded = U::decode(buf.chunk());
        buf.advance(len);
        decoded
    } else {
        U::decode(buf.copy_to_bytes(len))
    }
}

#[cfg(test)]
mod tests {
    use prost::bytes::Buf as _;

    use super::*;
    use crate::wire::v1;

    fn sample() -> v1::BatchId {
        v1::BatchId {
            node: "node-a".into(),
            boot_id: "3f0c".into(),
            seq: 42,
        }
    }

    #[test]
    fn decodes_contiguous_and_split_buffers_alike() {
        let bytes = sample().encode_to_vec();
        let mut whole: &[u8] = &bytes;
        assert_eq!(decode_all::<v1::BatchId>(&mut whole), Ok(sample()));
        assert!(whole.is_empty(), "the message is consumed");
        for at in 0..bytes.len() {
            let (a, b) = bytes.split_at(at);
            let mut split = a.chain(b);
            assert_eq!(
                decode_all::<v1::BatchId>(&mut split),
                Ok(sample()),
                "split at {at}"
            );
            assert_eq!(split.remaining(), 0);
        }
    }

    #[test]
    fn malformed_bytes_are_prost_errors() {
        let mut truncated: &[u8] = &sample().encode_to_vec()[..5];
        let err = decode_all::<v1::BatchId>(&mut truncated).expect_err("truncated");
        assert!(
            err.to_string()
                .starts_with("failed to decode Protobuf message"),
            "{err}"
        );
    }
}
