//! A growable bitset over small dense ids: the member set of a selector.
//! Identity ids are recycled, so the sets stay as small as the cluster.

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BitSet {
    words: Vec<u64>,
}

impl BitSet {
    pub fn insert(&mut self, i: u32) -> bool {
        let (w, b) = ((i / 64) as usize, i % 64);
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        let was = self.words[w] & (1 << b) != 0;
        self.words[w] |= 1 << b;
        !was
    }

    pub fn remove(&mut self, i: u32) -> bool {
        let (w, b) = ((i / 64) as usize, i % 64);
        match self.words.get_mut(w) {
            Some(word) if *word & (1 << b) != 0 => {
                *word &= !(1 << b);
                true
            }
            _ => false,
        }
    }

    #[inline]
    pub fn contains(&self, i: u32) -> bool {
        let (w, b) = ((i / 64) as usize, i % 64);
        self.words.get(w).is_some_and(|word| word & (1 << b) != 0)
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                Some(w as u32 * 64 + b)
            })
        })
    }

    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }
}

impl BitSet {
    /// `self |= other`.
    pub fn extend_from(&mut self, other: &BitSet) {
        if other.words.len() > self.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
    }

    /// Members in exactly one of `self` and `other`.
    pub fn symmetric_difference(&self, other: &BitSet) -> BitSet {
        let n = self.words.len().max(other.words.len());
        let word = |s: &BitSet, i: usize| s.words.get(i).copied().unwrap_or(0);
        BitSet { words: (0..n).map(|i| word(self, i) ^ word(other, i)).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_iterate() {
        let mut s = BitSet::default();
        assert!(s.insert(3));
        assert!(!s.insert(3));
        s.insert(64);
        s.insert(200);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![3, 64, 200]);
        assert!(s.remove(64));
        assert!(!s.contains(64));
        assert!(!s.remove(1000));
        assert_eq!(s.len(), 2);
        let mut t = BitSet::default();
        t.insert(3);
        t.insert(500);
        assert_eq!(s.symmetric_difference(&t).iter().collect::<Vec<_>>(), vec![200, 500]);
    }
}
