//! The socket under a replication connection: TLS negotiation, framing of backend messages,
//! authentication, and the decoding of simple-query rows.

use super::*;

/// The most the read buffer grows by at once while a long frame arrives.
const READ_RESERVE_CHUNK: usize = 1 << 20;

/// Sets TCP keepalives and `TCP_USER_TIMEOUT` on a fresh connection, as configured (zero
/// values leave the system defaults).
pub(super) fn configure_dead_peer_detection(
    tcp: &TcpStream,
    config: &ReplicationConfig,
) -> io::Result<()> {
    let socket = socket2::SockRef::from(tcp);
    if config.keepalives {
        let mut keepalive = socket2::TcpKeepalive::new();
        if !config.keepalives_idle.is_zero() {
            keepalive = keepalive.with_time(config.keepalives_idle);
        }
        // The systems where socket2 can set both TCP_KEEPINTVL and TCP_KEEPCNT.
        #[cfg(any(
            target_os = "android",
            target_os = "freebsd",
            target_os = "ios",
            target_os = "linux",
            target_os = "macos",
            target_os = "netbsd",
            target_os = "windows",
        ))]
        {
            if !config.keepalives_interval.is_zero() {
                keepalive = keepalive.with_interval(config.keepalives_interval);
            }
            if config.keepalives_retries > 0 {
                keepalive = keepalive.with_retries(config.keepalives_retries);
            }
        }
        socket.set_tcp_keepalive(&keepalive)?;
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if !config.tcp_user_timeout.is_zero() {
        socket.set_tcp_user_timeout(Some(config.tcp_user_timeout))?;
    }
    Ok(())
}

/// One complete frame from the server.
pub(super) enum Frame {
    /// `W`, which postgres-protocol does not parse.
    CopyBothResponse,
    /// `d`, the payload only.
    CopyData(Bytes),
    /// `d` longer than the frame limit: the payload's first bytes and its full length; the
    /// rest is discarded as it arrives ([`Connection::skip`]).
    OversizedCopyData {
        /// At most the XLogData header and [`OVERSIZED_HEAD_LEN`] bytes of its message.
        head: Bytes,
        /// The payload's length.
        len: usize,
    },
    /// Anything else, parsed by postgres-protocol (notices and parameter statuses excluded:
    /// they are consumed by [`Connection::read_frame`]).
    Message(Message),
}

/// Sends the SSLRequest and, if the server accepts, runs the TLS handshake.
pub(super) async fn negotiate_tls(
    mut tcp: TcpStream,
    tls: TlsSetup,
    config: &ReplicationConfig,
) -> Result<Stream, Error> {
    let mut request = BytesMut::with_capacity(8);
    frontend::ssl_request(&mut request);
    tcp.write_all(&request).await?;
    // Exactly one byte: anything the server sent after an `S` belongs to the TLS handshake
    // (reading ahead would let a man in the middle inject plaintext, CVE-2021-23222).
    let mut answer = [0u8; 1];
    if tcp.read(&mut answer).await? == 0 {
        return Err(Error::Closed);
    }
    match answer[0] {
        b'S' => tls.handshake(tcp).await,
        b'N' if config.ssl_mode == SslMode::Prefer => {
            tracing::debug!(host = %config.host, "the server refused TLS; sslmode=prefer goes on without");
            Ok(Stream::Plain(tcp))
        }
        b'N' => Err(Error::TlsRefused {
            mode: config.ssl_mode,
        }),
        // An ErrorResponse (too many connections, a server older than 7.0...): report it.
        b'E' => {
            let mut conn = Connection::new(Stream::Plain(tcp), config.max_frame_len);
            conn.read_buf.put_u8(b'E');
            match conn.read_message().await? {
                Message::ErrorResponse(body) => Err(db_error(&body)),
                _ => Err(protocol("unexpected reply to SSLRequest")),
            }
        }
        _ => Err(protocol("unexpected reply to SSLRequest")),
    }
}

/// The socket and its buffers.
pub(super) struct Connection {
    pub(super) stream: Stream,
    pub(super) read_buf: BytesMut,
    pub(super) write_buf: BytesMut,
    pub(super) max_frame_len: usize,
    /// Bytes of an oversized CopyData still to discard before the next frame starts.
    pub(super) skip: usize,
    pub(super) parameters: HashMap<String, String>,
    pub(super) backend_pid: Option<i32>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.stream.tcp().peer_addr().ok())
            .field("tls", &self.stream.is_tls())
            .field("backend_pid", &self.backend_pid)
            .finish_non_exhaustive()
    }
}

impl Connection {
    pub(super) fn new(stream: Stream, max_frame_len: usize) -> Self {
        Connection {
            stream,
            read_buf: BytesMut::with_capacity(8 * 1024),
            write_buf: BytesMut::new(),
            max_frame_len,
            skip: 0,
            parameters: HashMap::new(),
            backend_pid: None,
        }
    }

    /// Writes and clears the write buffer. The flush pushes out what TLS still buffers.
    pub(super) async fn send(&mut self) -> Result<(), Error> {
        self.stream.write_all(&self.write_buf).await?;
        self.stream.flush().await?;
        self.write_buf.clear();
        Ok(())
    }

    /// Sends a simple Query.
    pub(super) async fn query(&mut self, sql: &str) -> Result<(), Error> {
        if sql.contains('\0') {
            return Err(Error::InvalidArgument("the query contains a NUL byte"));
        }
        frontend::query(sql, &mut self.write_buf)
            .map_err(|_| Error::InvalidArgument("the query contains a NUL byte"))?;
        self.send().await
    }

    /// The next frame, skipping (and recording) notices and parameter statuses.
    pub(super) async fn read_frame(&mut self) -> Result<Frame, Error> {
        loop {
            while let Some(frame) = self.parse_frame()? {
                match frame {
                    Frame::Message(Message::ParameterStatus(body)) => {
                        if let (Ok(name), Ok(value)) = (body.name(), body.value()) {
                            self.parameters.insert(name.to_owned(), value.to_owned());
                        }
                    }
                    Frame::Message(Message::NoticeResponse(body)) => log_notice(&body),
                    Frame::Message(Message::NotificationResponse(_)) => {}
                    frame => return Ok(frame),
                }
            }
            if self.skip > 0 {
                // Read past an oversized frame in chunks, reusing the buffer's memory.
                self.read_buf.reserve(self.skip.min(READ_RESERVE_CHUNK));
            }
            if self.stream.read_buf(&mut self.read_buf).await? == 0 {
                return Err(Error::Closed);
            }
        }
    }

    /// The next frame that is not CopyData or CopyBothResponse.
    pub(super) async fn read_message(&mut self) -> Result<Message, Error> {
        match self.read_frame().await? {
            Frame::Message(message) => Ok(message),
            Frame::CopyBothResponse | Frame::CopyData(_) | Frame::OversizedCopyData { .. } => {
                Err(protocol("unexpected copy message in command mode"))
            }
        }
    }

    /// Takes one complete frame off the read buffer, if there is one.
    pub(super) fn parse_frame(&mut self) -> Result<Option<Frame>, Error> {
        if !self.discard() {
            return Ok(None);
        }
        let Some(header) = self.read_buf.get(..5) else {
            return Ok(None);
        };
        let tag = header[0];
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        let body_len = usize::try_from(len)
            .ok()
            .and_then(|len| len.checked_sub(4))
            .ok_or_else(|| protocol("message length below 4"))?;
        if body_len > self.max_frame_len && tag == b'd' {
            // WAL data can be legitimately long (a wide row): keep its head, which names the
            // relation, and read past the rest without holding it.
            let head_len = body_len.min(XLOGDATA_HEADER_LEN + OVERSIZED_HEAD_LEN);
            if self.read_buf.len() < 5 + head_len {
                self.read_buf.reserve(5 + head_len - self.read_buf.len());
                return Ok(None);
            }
            self.read_buf.advance(5);
            let head = self.read_buf.split_to(head_len).freeze();
            self.skip = body_len - head_len;
            self.discard();
            return Ok(Some(Frame::OversizedCopyData {
                head,
                len: body_len,
            }));
        }
        if body_len > self.max_frame_len {
            return Err(Error::FrameTooLarge {
                len: body_len,
                max: self.max_frame_len,
            });
        }
        let total = 5 + body_len;
        if self.read_buf.len() < total {
            let missing = total - self.read_buf.len();
            self.read_buf.reserve(missing.min(READ_RESERVE_CHUNK));
            return Ok(None);
        }
        let frame = match tag {
            b'W' => {
                self.read_buf.advance(total);
                Frame::CopyBothResponse
            }
            b'd' => {
                let mut frame = self.read_buf.split_to(total);
                frame.advance(5);
                Frame::CopyData(frame.freeze())
            }
            _ => match Message::parse(&mut self.read_buf) {
                Ok(Some(message)) => Frame::Message(message),
                Ok(None) => return Err(protocol("incomplete message after framing")),
                Err(source) => {
                    return Err(Error::Protocol {
                        reason: "unparsable backend message",
                        source: Some(source),
                    })
                }
            },
        };
        Ok(Some(frame))
    }

    /// Drops what is buffered of an oversized frame's rest; whether it has all been dropped.
    fn discard(&mut self) -> bool {
        let n = self.skip.min(self.read_buf.len());
        self.read_buf.advance(n);
        self.skip -= n;
        self.skip == 0
    }

    pub(super) async fn authenticate(&mut self, config: &ReplicationConfig) -> Result<(), Error> {
        loop {
            match self.read_message().await? {
                Message::AuthenticationOk => return Ok(()),
                Message::AuthenticationCleartextPassword => {
                    let password = required_password(config)?;
                    frontend::password_message(password, &mut self.write_buf)
                        .map_err(|_| Error::InvalidArgument("the password contains a NUL byte"))?;
                    self.send().await?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let password = required_password(config)?;
                    let hash = md5_hash(config.user.as_bytes(), password, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.write_buf)
                        .map_err(|_| Error::InvalidArgument("the password contains a NUL byte"))?;
                    self.send().await?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut scram = false;
                    while let Some(mechanism) =
                        mechanisms.next().map_err(|source| Error::Protocol {
                            reason: "unparsable SASL mechanism list",
                            source: Some(source),
                        })?
                    {
                        scram |= mechanism == SCRAM_SHA_256;
                    }
                    if !scram {
                        return Err(Error::Unsupported(
                            "SASL mechanisms other than SCRAM-SHA-256",
                        ));
                    }
                    self.scram(required_password(config)?).await?;
                }
                Message::ErrorResponse(body) => return Err(db_error(&body)),
                Message::AuthenticationGss
                | Message::AuthenticationGssContinue(_)
                | Message::AuthenticationSspi
                | Message::AuthenticationKerberosV5
                | Message::AuthenticationScmCredential => {
                    return Err(Error::Unsupported(
                        "GSSAPI, SSPI, Kerberos and SCM authentication",
                    ))
                }
                _ => return Err(protocol("unexpected message during authentication")),
            }
        }
    }

    /// SCRAM-SHA-256 without channel binding (`tls-server-end-point` is not implemented).
    pub(super) async fn scram(&mut self, password: &[u8]) -> Result<(), Error> {
        let mut scram = ScramSha256::new(password, ChannelBinding::unsupported());
        frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), &mut self.write_buf)?;
        self.send().await?;
        match self.read_message().await? {
            Message::AuthenticationSaslContinue(body) => {
                scram
                    .update(body.data())
                    .map_err(|source| Error::Authentication {
                        reason: "invalid SCRAM server-first message",
                        source: Some(source),
                    })?
            }
            Message::ErrorResponse(body) => return Err(db_error(&body)),
            _ => return Err(protocol("unexpected message during SCRAM authentication")),
        }
        frontend::sasl_response(scram.message(), &mut self.write_buf)?;
        self.send().await?;
        match self.read_message().await? {
            Message::AuthenticationSaslFinal(body) => {
                scram
                    .finish(body.data())
                    .map_err(|source| Error::Authentication {
                        reason: "the server's SCRAM signature does not verify",
                        source: Some(source),
                    })
            }
            Message::ErrorResponse(body) => Err(db_error(&body)),
            _ => Err(protocol("unexpected message during SCRAM authentication")),
        }
    }
}

pub(super) fn required_password(config: &ReplicationConfig) -> Result<&[u8], Error> {
    config.password.as_deref().ok_or(Error::Authentication {
        reason: "the server asks for a password and none is configured",
        source: None,
    })
}

pub(super) fn protocol(reason: &'static str) -> Error {
    Error::Protocol {
        reason,
        source: None,
    }
}

pub(super) fn error_fields(
    mut fields: postgres_protocol::message::backend::ErrorFields<'_>,
) -> HashMap<u8, String> {
    let mut out = HashMap::new();
    // A malformed field list ends the parse; what was read so far is kept.
    while let Ok(Some(field)) = fields.next() {
        out.insert(
            field.type_(),
            String::from_utf8_lossy(field.value_bytes()).into_owned(),
        );
    }
    out
}

pub(super) fn db_error(body: &ErrorResponseBody) -> Error {
    let mut fields = error_fields(body.fields());
    Error::Db(Box::new(DbError {
        severity: fields.remove(&b'S').unwrap_or_default(),
        code: fields.remove(&b'C').unwrap_or_default(),
        message: fields.remove(&b'M').unwrap_or_default(),
        detail: fields.remove(&b'D'),
        hint: fields.remove(&b'H'),
    }))
}

pub(super) fn log_notice(body: &NoticeResponseBody) {
    let fields = error_fields(body.fields());
    tracing::debug!(
        severity = fields.get(&b'S').map(String::as_str),
        code = fields.get(&b'C').map(String::as_str),
        message = fields.get(&b'M').map(String::as_str),
        "server notice"
    );
}

pub(super) fn decode_row(body: &DataRowBody) -> Result<SimpleRow, Error> {
    let buffer = body.buffer();
    let mut ranges = body.ranges();
    let mut row = Vec::new();
    loop {
        let range = ranges.next().map_err(|source| Error::Protocol {
            reason: "malformed DataRow",
            source: Some(source),
        })?;
        let Some(range) = range else {
            return Ok(row);
        };
        row.push(match range {
            None => None,
            Some(range) => {
                let bytes = buffer
                    .get(range)
                    .ok_or_else(|| protocol("malformed DataRow"))?;
                Some(
                    std::str::from_utf8(bytes)
                        .map_err(|_| protocol("DataRow value is not UTF-8"))?
                        .to_owned(),
                )
            }
        });
    }
}
