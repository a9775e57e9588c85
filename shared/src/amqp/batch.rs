//! How jobs travel in messages: a job alone as itself, or several as one
//! batch message of the jobs the api gathered while a confirm was pending
//! (AMQP `type` [`BATCH_TYPE`], `{"v":1,"jobs":[job, ...]}`). Built here
//! ([`jobs_message`]) for every publisher, read here ([`unpack`]) by
//! every consumer. Each job of a batch decodes on its own: one that does
//! not is refused alone, with its own bytes.

use lapin::BasicProperties;
use serde::Deserialize;

use super::headers;
use super::publish::{Message, json_properties};
use super::topology::ROUTING_KEY;
use crate::job::{Job, JobError, VERSION};

/// The AMQP `type` of a message holding a batch of jobs.
pub const BATCH_TYPE: &str = "batch";

/// One message carrying `jobs`, each its encoded payload and its own
/// properties: a job alone goes as itself; several go as a batch message
/// (`type` [`BATCH_TYPE`], the count in the
/// [`JOBS`](headers::JOBS) header, a message id of its own),
/// which the worker unpacks into the same jobs. The one place a batch
/// message is built: the api's publishes, the worker's requeues and the
/// tests' fixtures all come here.
pub fn jobs_message(exchange: String, jobs: &[(&[u8], &BasicProperties)]) -> Message {
    let (payload, properties) = match jobs {
        [(payload, properties)] => (payload.to_vec(), (*properties).clone()),
        _ => {
            let properties = json_properties()
                .with_message_id(uuid::Uuid::now_v7().to_string().into())
                .with_type(BATCH_TYPE.into());
            let count = jobs.len().to_string();
            (
                batch_of(jobs.iter().map(|(payload, _)| *payload)),
                headers::with(properties, &[(headers::JOBS, &count)]),
            )
        }
    };
    Message {
        exchange,
        routing_key: ROUTING_KEY.into(),
        payload,
        properties,
    }
}

/// One batch message's payload, of jobs already encoded ([`Job::encode`]).
fn batch_of<'a>(encoded: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut payload = format!("{{\"v\":{VERSION},\"jobs\":[").into_bytes();
    for (index, job) in encoded.into_iter().enumerate() {
        if index > 0 {
            payload.push(b',');
        }
        payload.extend_from_slice(job);
    }
    payload.extend_from_slice(b"]}");
    payload
}

/// One job of a message as it came, decoded or not: a job that does not
/// decode keeps its bytes, to be dead-lettered as they are.
#[derive(Debug)]
pub struct Unpacked<'a> {
    pub job: Result<Job, JobError>,
    pub bytes: &'a [u8],
}

/// The jobs of a message of AMQP type `kind`: one, or those of a batch.
pub fn unpack<'a>(kind: Option<&str>, payload: &'a [u8]) -> Vec<Unpacked<'a>> {
    let whole = |job| {
        vec![Unpacked {
            job,
            bytes: payload,
        }]
    };
    if kind != Some(BATCH_TYPE) {
        return whole(Job::decode(payload));
    }
    #[derive(Deserialize)]
    struct Batch<'a> {
        v: u32,
        #[serde(borrow)]
        jobs: Vec<&'a serde_json::value::RawValue>,
    }
    match serde_json::from_slice::<Batch<'a>>(payload) {
        Ok(batch) if batch.v == VERSION => batch
            .jobs
            .into_iter()
            .map(|raw| Unpacked {
                job: Job::decode(raw.get().as_bytes()),
                bytes: raw.get().as_bytes(),
            })
            .collect(),
        Ok(batch) => whole(Err(JobError::Version(batch.v))),
        Err(error) => whole(Err(JobError::Malformed(error))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_unpacks_into_its_jobs_each_on_its_own() {
        let jobs = [
            Job::chat("t".into(), 1),
            Job::message("t".into(), 1, 1, "a, \"b\"".into()),
        ];
        let encoded: Vec<Vec<u8>> = jobs.iter().map(Job::encode).collect();
        let mut payload = batch_of(encoded.iter().map(Vec::as_slice));
        // A third job that is not one, spliced in before the closing `]}`.
        payload.truncate(payload.len() - 2);
        payload.extend_from_slice(br#",{"v":1,"kind":"thread"}]}"#);

        let unpacked = unpack(Some(BATCH_TYPE), &payload);

        assert_eq!(unpacked.len(), 3);
        assert_eq!(unpacked[0].job.as_ref().unwrap(), &jobs[0]);
        assert_eq!(unpacked[1].job.as_ref().unwrap(), &jobs[1]);
        assert_eq!(unpacked[1].bytes, jobs[1].encode());
        assert!(unpacked[2].job.is_err());
        assert_eq!(unpacked[2].bytes, br#"{"v":1,"kind":"thread"}"#);
    }

    #[test]
    fn a_single_job_or_an_unreadable_batch_unpacks_whole() {
        let job = Job::chat("t".into(), 1);
        let single = job.encode();
        let unpacked = unpack(Some("chat"), &single);
        assert_eq!(unpacked.len(), 1);
        assert_eq!(unpacked[0].job.as_ref().unwrap(), &job);

        for payload in [&b"nope"[..], br#"{"v":2,"jobs":[]}"#] {
            let unpacked = unpack(Some(BATCH_TYPE), payload);
            assert_eq!(unpacked.len(), 1, "{payload:?}");
            assert!(unpacked[0].job.is_err());
            assert_eq!(unpacked[0].bytes, payload);
        }
    }

    #[test]
    fn a_batch_message_as_the_api_wrote_it_before_this_module_still_unpacks() {
        let letter = br#"{"v":1,"jobs":[{"v":1,"id":"019ad0a5-7f3e-7c52-9a5e-0f5d2b9b7a11","kind":"chat","token":"5f0c9e","chat_number":3,"created_at_ms":1764428400000,"attempt":0},{"v":1,"id":"019ad0a5-7f3e-7c52-9a5e-0f5d2b9b7a12","kind":"message","token":"5f0c9e","chat_number":3,"message_number":1,"body":"hi","created_at_ms":1764428400001,"attempt":2}]}"#;
        let unpacked = unpack(Some("batch"), letter);
        assert_eq!(unpacked.len(), 2);
        let chat = unpacked[0].job.as_ref().unwrap();
        assert_eq!(
            (chat.kind(), chat.number(), chat.token.as_str()),
            (crate::job::Kind::Chat, 3, "5f0c9e")
        );
        let message = unpacked[1].job.as_ref().unwrap();
        assert_eq!(
            (message.chat_number(), message.number(), message.attempt),
            (3, 1, 2)
        );
    }

    #[test]
    fn several_jobs_go_as_one_batch_message_and_one_as_itself() {
        let jobs = [Job::chat("t".into(), 1), Job::chat("t".into(), 2)];
        let encoded: Vec<Vec<u8>> = jobs.iter().map(Job::encode).collect();
        let properties: Vec<BasicProperties> = jobs
            .iter()
            .map(super::super::publish::job_properties)
            .collect();
        let pairs: Vec<(&[u8], &BasicProperties)> =
            encoded.iter().map(Vec::as_slice).zip(&properties).collect();

        let batch = jobs_message("x".into(), &pairs);
        let kind = batch.properties.kind().as_ref().map(|kind| kind.as_str());
        assert_eq!(kind, Some(BATCH_TYPE));
        assert_eq!(
            headers::get(batch.properties.headers().as_ref(), headers::JOBS).as_deref(),
            Some("2")
        );
        assert_eq!(unpack(kind, &batch.payload).len(), 2);

        let single = jobs_message("x".into(), &pairs[..1]);
        assert_eq!(single.payload, encoded[0]);
    }
}
