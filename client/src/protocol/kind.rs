//! Frame kinds. A request kind is odd; its response is the next number,
//! except that any request may be answered with `ErrorResponse`.

/// Set in the request id of a request the broker starts (a check-back),
/// never in one a client starts: each end tells its own requests' answers
/// from the other end's requests by this bit alone.
pub const BROKER_REQUEST_BIT: u32 = 1 << 31;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Kind {
    MetadataRequest = 1,
    MetadataResponse = 2,
    CreateTopicRequest = 3,
    CreateTopicResponse = 4,
    ProduceRequest = 5,
    ProduceResponse = 6,
    FetchRequest = 7,
    FetchResponse = 8,
    JoinGroupRequest = 9,
    JoinGroupResponse = 10,
    HeartbeatRequest = 11,
    HeartbeatResponse = 12,
    LeaveGroupRequest = 13,
    LeaveGroupResponse = 14,
    CommitOffsetRequest = 15,
    CommitOffsetResponse = 16,
    FetchOffsetRequest = 17,
    FetchOffsetResponse = 18,
    EndTransactionRequest = 19,
    EndTransactionResponse = 20,
    ListTransactionsRequest = 21,
    ListTransactionsResponse = 22,
    RegisterProducerRequest = 23,
    RegisterProducerResponse = 24,
    /// Broker to producer: the only request the broker starts (its request
    /// id has `BROKER_REQUEST_BIT` set).
    CheckTransactionRequest = 25,
    CheckTransactionResponse = 26,
    SendBackRequest = 27,
    SendBackResponse = 28,
    ResendDeadLetterRequest = 29,
    ResendDeadLetterResponse = 30,
    /// Operators' requests (`ringmq status`, `group`, `offset`).
    ShardStatusRequest = 31,
    ShardStatusResponse = 32,
    ListGroupsRequest = 33,
    ListGroupsResponse = 34,
    GroupOffsetsRequest = 35,
    GroupOffsetsResponse = 36,
    /// Body: `ResetOffsetRequest`, answered with a `QueueOffsetResponse`.
    ResetOffsetRequest = 37,
    ResetOffsetResponse = 38,
    /// Body: `OffsetAtTimeRequest`, answered with a `QueueOffsetResponse`.
    OffsetAtTimeRequest = 39,
    OffsetAtTimeResponse = 40,
    /// Messages of a topic by key, from the shard's key index
    /// (`ringmq message query`; every shard is asked).
    QueryMessagesRequest = 41,
    QueryMessagesResponse = 42,
    /// A standby's shard asks its primary's shard for durable log bytes
    /// (`ReplicateRequest`; issue 13).
    ReplicateRequest = 43,
    ReplicateResponse = 44,
    /// Turns a standby into a primary with a new epoch (`ringmq promote`).
    PromoteRequest = 45,
    PromoteResponse = 46,
    ErrorResponse = 100,
}

impl Kind {
    pub fn from_u16(value: u16) -> Option<Self> {
        use Kind::*;
        Some(match value {
            1 => MetadataRequest,
            2 => MetadataResponse,
            3 => CreateTopicRequest,
            4 => CreateTopicResponse,
            5 => ProduceRequest,
            6 => ProduceResponse,
            7 => FetchRequest,
            8 => FetchResponse,
            9 => JoinGroupRequest,
            10 => JoinGroupResponse,
            11 => HeartbeatRequest,
            12 => HeartbeatResponse,
            13 => LeaveGroupRequest,
            14 => LeaveGroupResponse,
            15 => CommitOffsetRequest,
            16 => CommitOffsetResponse,
            17 => FetchOffsetRequest,
            18 => FetchOffsetResponse,
            19 => EndTransactionRequest,
            20 => EndTransactionResponse,
            21 => ListTransactionsRequest,
            22 => ListTransactionsResponse,
            23 => RegisterProducerRequest,
            24 => RegisterProducerResponse,
            25 => CheckTransactionRequest,
            26 => CheckTransactionResponse,
            27 => SendBackRequest,
            28 => SendBackResponse,
            29 => ResendDeadLetterRequest,
            30 => ResendDeadLetterResponse,
            31 => ShardStatusRequest,
            32 => ShardStatusResponse,
            33 => ListGroupsRequest,
            34 => ListGroupsResponse,
            35 => GroupOffsetsRequest,
            36 => GroupOffsetsResponse,
            37 => ResetOffsetRequest,
            38 => ResetOffsetResponse,
            39 => OffsetAtTimeRequest,
            40 => OffsetAtTimeResponse,
            41 => QueryMessagesRequest,
            42 => QueryMessagesResponse,
            43 => ReplicateRequest,
            44 => ReplicateResponse,
            45 => PromoteRequest,
            46 => PromoteResponse,
            100 => ErrorResponse,
            _ => return None,
        })
    }

    /// The response kind that answers this request kind.
    pub fn response(self) -> Option<Kind> {
        let value = self as u16;
        if value % 2 == 1 {
            Kind::from_u16(value + 1)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_and_requests_have_responses() {
        for value in 0..200 {
            if let Some(kind) = Kind::from_u16(value) {
                assert_eq!(kind as u16, value);
                if value % 2 == 1 {
                    assert_eq!(kind.response().map(|response| response as u16), Some(value + 1));
                }
            }
        }
    }
}
