//! Memory on a Qdrant server, shared by every agent of an installation.
//!
//! The collection is created on the first store, sized by that first embedding, with
//! cosine distance and keyword indexes on the fields filters test. Points and filters use
//! the same payload as [`super::edge::EdgeMemory`].

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use qdrant_client::qdrant::{
    Condition, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder, Distance, FieldType,
    Filter as QdrantFilter, PointStruct, QueryPointsBuilder, UpsertPointsBuilder,
    VectorParamsBuilder,
};
use qdrant_client::{Payload, Qdrant};
use serde_json::Map;
use tokio::sync::OnceCell;

use super::{
    Conditions, Embedder, FILTERED_FIELDS, FieldMatch, Filter, Hit, Memory, MemoryError, Record,
    embed_query, embed_records, filter_conditions, payload_hit, store_error,
};

/// Long-term memory in a collection of a Qdrant server.
pub struct QdrantMemory {
    client: Qdrant,
    collection: String,
    embedder: Arc<dyn Embedder>,
    /// Set once this process knows the collection exists, so stores do not ask each time.
    created: OnceCell<()>,
}

impl fmt::Debug for QdrantMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QdrantMemory")
            .field("collection", &self.collection)
            .finish_non_exhaustive()
    }
}

impl QdrantMemory {
    /// Connects to the server at `url` (its gRPC port, 6334 by default) and checks that it
    /// answers. The collection is created on the first store if it does not exist.
    pub async fn new(
        url: &str,
        api_key: Option<String>,
        collection: &str,
        embedder: Arc<dyn Embedder>,
    ) -> Result<Self, MemoryError> {
        let client = Qdrant::from_url(url)
            .api_key(api_key)
            // The check only logs a version mismatch; the existence query below is the
            // call that proves the server answers.
            .skip_compatibility_check()
            .build()
            .map_err(store_error)?;
        let memory = Self {
            client,
            collection: collection.to_owned(),
            embedder,
            created: OnceCell::new(),
        };
        if memory.collection_exists().await? {
            memory.created.set(()).ok();
        }
        Ok(memory)
    }

    /// Stores `records` with one embedding call and one upsert. Storing a record again
    /// (same project, task, kind and text) replaces it.
    pub async fn store_many(&self, records: &[Record]) -> Result<(), MemoryError> {
        if records.is_empty() {
            return Ok(());
        }
        let (points, dimension) = embed_records(self.embedder.as_ref(), records).await?;
        self.ensure_collection(dimension).await?;
        let points: Vec<PointStruct> = points
            .into_iter()
            .map(|point| PointStruct::new(point.id, point.vector, Payload::from(point.payload)))
            .collect();
        self.client
            .upsert_points(UpsertPointsBuilder::new(&self.collection, points).wait(true))
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn collection_exists(&self) -> Result<bool, MemoryError> {
        self.client
            .collection_exists(&self.collection)
            .await
            .map_err(store_error)
    }

    async fn ensure_collection(&self, dimension: usize) -> Result<(), MemoryError> {
        self.created
            .get_or_try_init(|| self.create_collection(dimension))
            .await
            .map(|&()| ())
    }

    async fn create_collection(&self, dimension: usize) -> Result<(), MemoryError> {
        if self.collection_exists().await? {
            return Ok(());
        }
        let created = self
            .client
            .create_collection(
                CreateCollectionBuilder::new(&self.collection)
                    .vectors_config(VectorParamsBuilder::new(dimension as u64, Distance::Cosine)),
            )
            .await;
        if let Err(err) = created {
            // Another agent may have created it between the check and the create.
            if !self.collection_exists().await? {
                return Err(store_error(err));
            }
            return Ok(());
        }
        for field in FILTERED_FIELDS {
            self.client
                .create_field_index(
                    CreateFieldIndexCollectionBuilder::new(
                        &self.collection,
                        field,
                        FieldType::Keyword,
                    )
                    .wait(true),
                )
                .await
                .map_err(store_error)?;
        }
        Ok(())
    }

    async fn search_collection(
        &self,
        query: &str,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<Hit>, MemoryError> {
        let filter = qdrant_filter(&filter_conditions(filter)?);
        if limit == 0 {
            return Ok(Vec::new());
        }
        if self.created.get().is_none() && !self.collection_exists().await? {
            // Nothing stored yet, anywhere.
            return Ok(Vec::new());
        }
        let vector = embed_query(self.embedder.as_ref(), query).await?;
        let mut request = QueryPointsBuilder::new(&self.collection)
            .query(vector)
            .limit(limit as u64)
            .with_payload(true);
        if let Some(filter) = filter {
            request = request.filter(filter);
        }
        let response = self.client.query(request).await.map_err(store_error)?;
        Ok(response
            .result
            .into_iter()
            .filter_map(|point| {
                let payload: Map<_, _> = point
                    .payload
                    .into_iter()
                    .map(|(key, value)| (key, value.into()))
                    .collect();
                payload_hit(&payload, point.score)
            })
            .collect())
    }
}

impl Memory for QdrantMemory {
    fn store<'a>(&'a self, record: &'a Record) -> BoxFuture<'a, Result<(), MemoryError>> {
        Box::pin(self.store_many(std::slice::from_ref(record)))
    }

    fn search<'a>(
        &'a self,
        query: &'a str,
        filter: &'a Filter,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Hit>, MemoryError>> {
        Box::pin(self.search_collection(query, filter, limit))
    }
}

fn qdrant_filter(conditions: &Conditions) -> Option<QdrantFilter> {
    if conditions.is_empty() {
        return None;
    }
    let translate = |matches: &[FieldMatch]| -> Vec<Condition> {
        matches
            .iter()
            .map(|m| Condition::matches(m.field, m.value.clone()))
            .collect()
    };
    Some(QdrantFilter {
        must: translate(&conditions.must),
        must_not: translate(&conditions.must_not),
        ..QdrantFilter::default()
    })
}

#[cfg(test)]
mod tests {
    use qdrant_client::qdrant::condition::ConditionOneOf;
    use qdrant_client::qdrant::r#match::MatchValue;

    use super::*;
    use crate::memory::Kind;

    /// The field and keyword each condition tests.
    fn keywords(conditions: &[Condition]) -> Vec<(&str, &str)> {
        conditions
            .iter()
            .filter_map(|condition| match &condition.condition_one_of {
                Some(ConditionOneOf::Field(field)) => match &field.r#match {
                    Some(m) => match &m.match_value {
                        Some(MatchValue::Keyword(value)) => {
                            Some((field.key.as_str(), value.as_str()))
                        }
                        _ => None,
                    },
                    None => None,
                },
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_filter_becomes_keyword_matches_on_the_payload() {
        let filter = Filter {
            namespace: "shop".into(),
            project: Some("shop/web".into()),
            not_project: Some("shop/api".into()),
            kind: Some(Kind::Brief),
            role: Some("planner".into()),
        };
        let translated = qdrant_filter(&filter_conditions(&filter).unwrap()).unwrap_or_default();
        assert_eq!(
            keywords(&translated.must),
            [
                ("namespace", "shop"),
                ("project", "shop/web"),
                ("kind", "brief"),
                ("role", "planner")
            ]
        );
        assert_eq!(keywords(&translated.must_not), [("project", "shop/api")]);
        assert!(translated.should.is_empty());
        assert!(qdrant_filter(&Conditions::default()).is_none());
    }
}
