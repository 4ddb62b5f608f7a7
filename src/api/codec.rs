//! The protobuf codec of kluis's servers: tonic's prost codec (its encoder), except for a
//! message that does not decode.
//!
//! tonic's codec answers a request whose bytes are not a valid message of its type (a string
//! field that is not UTF-8, a field of the wrong wire type, a length past the end) with
//! `INTERNAL`, the code kluis keeps for its own faults: an alert on `INTERNAL` would fire for a
//! client's bad bytes, and the client would be told that kluis failed. Here such a message is
//! `INVALID_ARGUMENT`, with prost's account of what did not decode (the message and field where
//! it can name one; it may quote a number it read, a field number or wire type, never a value)
//! and what to do. Nothing has been decoded, so nothing is stored. A request framed wrong, which
//! tonic refuses before any message reaches a codec, is `server::metered`'s to answer.
//!
//! Only kluis's servers use this codec (`build.rs` names it for them): the generated clients
//! are built apart with tonic's, so that an answer from a server that does not decode stays
//! `INTERNAL` there, a fault of the server or of the versions between them, and is never taken
//! for a refusal of what the client sent (the CLI keeps what it cannot know to be refused).

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    Status,
    codec::{BufferSettings, DecodeBuf, Decoder},
};
use tonic_prost::ProstEncoder;

/// The codec `build.rs` gives every server method of `kluis.v1` (`codec_path`).
#[derive(Debug, Clone)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = MessageDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        MessageDecoder(PhantomData)
    }
}

/// Decodes a `U`; bytes that are not one are the sender's error.
#[derive(Debug, Clone)]
pub struct MessageDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for MessageDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| undecodable(&e))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// The answer to a message that does not decode. prost's description names the message and
/// field ("GetRecordRequest.record_id: invalid string value: data is not UTF-8 encoded"),
/// never the bytes.
fn undecodable(e: &prost::DecodeError) -> Status {
    Status::invalid_argument(format!(
        "{e}: the message is not one of kluis's API as its proto files define it; build the \
         client from kluis's `proto/kluis/v1` and send the fields with their declared types"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_that_does_not_decode_is_an_invalid_argument_naming_its_field() {
        // Field 2 (`record_id`, a string) holding bytes that are not UTF-8.
        let e = crate::pb::GetRecordRequest::decode(&[0x12, 0x02, 0xff, 0xfe][..]).unwrap_err();
        let status = undecodable(&e);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("GetRecordRequest.record_id"),
            "{}",
            status.message()
        );
        assert!(status.message().contains("proto/kluis/v1"));
        // The twin: the same field as UTF-8 decodes.
        let ok = crate::pb::GetRecordRequest::decode(&[0x12, 0x02, b'a', b'b'][..]).unwrap();
        assert_eq!(ok.record_id, "ab");
    }
}
