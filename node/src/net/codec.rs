//! The request-response codec of Cairn's protocols: one
//! `uvarint(len) || DAG-CBOR(message)` each way per stream, read with the
//! message type's limit before allocating (see `cairn_protocol::wire`).

use std::io;
use std::marker::PhantomData;

use cairn_protocol::wire::{self, Message};
use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use libp2p::StreamProtocol;

pub struct Codec<Req, Resp>(PhantomData<fn() -> (Req, Resp)>);

impl<Req, Resp> Default for Codec<Req, Resp> {
    fn default() -> Self {
        Codec(PhantomData)
    }
}

impl<Req, Resp> Clone for Codec<Req, Resp> {
    fn clone(&self) -> Self {
        Self::default()
    }
}

async fn read<M: Message, T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<M> {
    let len = unsigned_varint::aio::read_usize(&mut *io)
        .await
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if len > M::MAX_SIZE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            wire::WireError::TooLarge {
                len,
                max: M::MAX_SIZE,
            },
        ));
    }
    let mut body = vec![0; len];
    io.read_exact(&mut body).await?;
    M::decode_shared(body.into()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

async fn write<M: Message + Send, T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    msg: M,
) -> io::Result<()> {
    let invalid = |e| io::Error::new(io::ErrorKind::InvalidInput, e);
    let mut len = unsigned_varint::encode::usize_buffer();
    // Bulk data goes out from where it is, not copied into a body first.
    if let Some(parts) = msg.parts() {
        let parts = parts.map_err(invalid)?;
        io.write_all(unsigned_varint::encode::usize(parts.len(), &mut len))
            .await?;
        io.write_all(&parts.head).await?;
        io.write_all(&parts.payload).await?;
        io.write_all(&parts.tail).await?;
        return io.close().await;
    }
    let body = wire::encode(&msg).map_err(invalid)?;
    io.write_all(unsigned_varint::encode::usize(body.len(), &mut len))
        .await?;
    io.write_all(&body).await?;
    io.close().await
}

impl<Req, Resp> libp2p::request_response::Codec for Codec<Req, Resp>
where
    Req: Message + Send,
    Resp: Message + Send,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Req>
    where
        T: AsyncRead + Unpin + Send,
    {
        read(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        read(io).await
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Req) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write(io, req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        resp: Resp,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write(io, resp).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_protocol::wire::{FetchRequest, FetchResponse};
    use futures::io::Cursor;
    use libp2p::request_response::Codec as _;

    const P: StreamProtocol = StreamProtocol::new(wire::FETCH_PROTOCOL);

    #[tokio::test]
    async fn round_trip_and_limit_checked_before_reading() {
        let mut codec = Codec::<FetchRequest, FetchResponse>::default();
        let req = FetchRequest::PieceV1 {
            piece: cairn_protocol::block::piece_cid(b"x"),
        };
        let mut buf = Cursor::new(Vec::new());
        codec
            .write_request(&P, &mut buf, req.clone())
            .await
            .expect("write");
        let mut input = Cursor::new(buf.into_inner());
        assert_eq!(codec.read_request(&P, &mut input).await.expect("read"), req);

        // A length prefix over the limit fails before any body is read.
        let mut len = unsigned_varint::encode::usize_buffer();
        let prefix = unsigned_varint::encode::usize(FetchRequest::MAX_SIZE + 1, &mut len);
        let err = codec
            .read_request(&P, &mut Cursor::new(prefix.to_vec()))
            .await
            .expect_err("over the limit");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn a_transfer_written_in_parts_reads_back() {
        use cairn_protocol::wire::{StoreRequest, StoreResponse, Transfer};
        const S: StreamProtocol = StreamProtocol::new(wire::STORE_PROTOCOL);
        let mut codec = Codec::<StoreRequest, StoreResponse>::default();
        let req = StoreRequest::TransferV1(Transfer {
            piece: cairn_protocol::block::piece_cid(b"x"),
            nonce: [5; 16],
            data: vec![7u8; 300_000].into(),
        });
        let mut buf = Cursor::new(Vec::new());
        codec
            .write_request(&S, &mut buf, req.clone())
            .await
            .expect("write");
        let mut input = Cursor::new(buf.into_inner());
        assert_eq!(codec.read_request(&S, &mut input).await.expect("read"), req);
    }
}
