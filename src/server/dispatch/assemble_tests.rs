//! Assembling a cycle's answers in request order: owners that did not
//! answer, and rounds cut short by an owner's answer budget.

use super::*;
use crate::frame::encode_frame;
use crate::proto::CacheOperation;
use crate::protocol::binary::decode_operation;

fn frame_with_id(operation: &str, key: &str, correlation_id: &str) -> Vec<u8> {
    let op = CacheOperation {
        operation: operation.into(),
        key: key.as_bytes().to_vec().into(),
        correlation_id: correlation_id.into(),
        ..Default::default()
    };
    let mut out = Vec::new();
    encode_frame(&op, &mut out);
    out
}

#[test]
fn requests_whose_owner_did_not_answer_keep_their_own_correlation_ids() {
    use prost::Message as _;
    // A local request, then two forwarded to shard 1, which timed out.
    let frames = [
        frame_with_id("get", "here", "id-local"),
        frame_with_id("get", "there", "id-first"),
        frame_with_id("set", "there-too", "id-second"),
    ];
    let input = frames.concat();
    let mut record = CycleRecord::default();
    record.begin(0);
    let mut at = 0;
    for f in &frames {
        record.push(at, f.len());
        let frame = &input[at..at + f.len()];
        let op = decode_operation(&frame[FRAME_HEADER_BYTES..]).unwrap();
        record.set_op(
            OpKind::parse(op.operation).unwrap(),
            frame,
            op.key,
            op.correlation_id,
        );
        at += f.len();
    }
    let out = b"LOCAL-ANSWER".to_vec();
    let steps = [
        Step::Local {
            start: 0,
            end: out.len() as u32,
        },
        Step::Remote { owner: 1 },
        Step::Remote { owner: 1 },
    ];
    let mut replies = vec![None, Some(Err(ForwardError::Timeout))];
    let mut assembled = Vec::new();
    let cycle = Cycle {
        steps: &steps,
        out: &out,
        record: &record,
        input: &input,
    };
    let done = assemble_answers(&cycle, 0, &mut [], 0, &mut replies, &[false; 2], &mut assembled);
    assert_eq!(done, steps.len());

    assert_eq!(&assembled[..out.len()], &out[..]);
    let rest = &assembled[out.len()..];
    let mut frames = crate::frame::Frames::new(rest);
    for expected in ["id-first", "id-second"] {
        let answer = crate::proto::CacheResponse::decode(frames.next().unwrap()).unwrap();
        assert_eq!(answer.status, Status::Timeout.code_number());
        assert_eq!(answer.correlation_id, expected);
    }
    assert_eq!(frames.consumed(), rest.len(), "one answer per request");
}

#[test]
fn a_round_stops_at_an_answer_still_to_come_and_the_next_goes_on_from_there() {
    let mut record = CycleRecord::default();
    record.begin(0);
    for at in 0..3 {
        record.push(at, 1);
    }
    let out = b"AB".to_vec();
    let steps = [
        Step::Local { start: 0, end: 1 },
        Step::Remote { owner: 1 },
        Step::Local { start: 1, end: 2 },
    ];
    let cycle = Cycle {
        steps: &steps,
        out: &out,
        record: &record,
        input: b"...",
    };
    // Owner 1 stopped at its budget before running the request.
    let mut replies = vec![None, None];
    let mut assembled = Vec::new();
    let next = assemble_answers(
        &cycle,
        0,
        &mut [],
        0,
        &mut replies,
        &[false, true],
        &mut assembled,
    );
    assert_eq!((next, &assembled[..]), (1, &b"A"[..]));
    // Its answer came in the next round.
    let mut reply = Vec::new();
    ResponseEncoder::simple(&mut reply, Status::Ok, b"v", None, b"");
    replies[1] = Some(Ok(ReplyCursor::new(reply.clone())));
    assembled.clear();
    let next = assemble_answers(
        &cycle,
        next,
        &mut [],
        0,
        &mut replies,
        &[false, false],
        &mut assembled,
    );
    assert_eq!(next, steps.len());
    assert_eq!(assembled, [&reply[..], b"B"].concat());
}
