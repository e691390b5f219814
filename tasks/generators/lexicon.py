"""Word lists the generators draw from (authored by the project)."""

NAMES = ('Alice', 'Bob', 'Carol', 'David', 'Emma', 'Frank', 'Grace', 'Henry', 'Irene', 'Jack',
         'Karen', 'Leo', 'Maria', 'Nina', 'Oscar', 'Paula', 'Quinn', 'Rosa', 'Sam', 'Tara',
         'Umar', 'Vera', 'Walter', 'Xena', 'Yusuf', 'Zoe')
CITIES = ('Paris', 'Lima', 'Oslo', 'Cairo', 'Tokyo', 'Quito', 'Rome', 'Dublin', 'Nairobi',
          'Madrid', 'Seoul', 'Lisbon', 'Vienna', 'Hanoi', 'Toronto', 'Sydney')
JOBS = ('teacher', 'doctor', 'baker', 'pilot', 'farmer', 'nurse', 'painter', 'engineer',
        'lawyer', 'chef', 'writer', 'plumber', 'dentist', 'librarian')
PETS = ('cat', 'dog', 'parrot', 'rabbit', 'turtle', 'goldfish', 'hamster', 'horse')
COLORS = ('red', 'blue', 'green', 'yellow', 'black', 'white', 'purple', 'orange', 'pink', 'brown')
OBJECTS = ('ball', 'book', 'key', 'pen', 'cup', 'coin', 'hat', 'ring', 'phone', 'lamp')
PLACES = ('kitchen', 'garden', 'bedroom', 'garage', 'office', 'hallway', 'attic', 'basement')
FRUITS = ('apples', 'pears', 'plums', 'oranges', 'lemons', 'cherries', 'peaches', 'grapes')
WORDS = ('apple', 'river', 'stone', 'cloud', 'garden', 'window', 'silver', 'market', 'pencil',
         'forest', 'bridge', 'candle', 'planet', 'orange', 'ticket', 'shadow', 'winter', 'castle',
         'rocket', 'violin', 'butter', 'engine', 'island', 'mirror', 'monkey', 'pocket', 'summer',
         'tunnel', 'velvet', 'yellow', 'basket', 'circle', 'dragon', 'flower', 'jacket', 'ladder',
         'meadow', 'needle', 'pillow', 'rabbit', 'salmon', 'turtle', 'wallet', 'zebra', 'lemon',
         'tiger', 'chair', 'table', 'music', 'paper', 'light', 'train', 'storm', 'beach', 'horse',
         'night', 'smile', 'bread', 'grass', 'honey', 'ocean', 'piano', 'queen', 'sugar', 'water')
ANIMALS = ('cats', 'dogs', 'birds', 'fish', 'horses', 'lions', 'wolves', 'bears', 'frogs', 'owls')
KINDS = ('mammals', 'pets', 'hunters', 'swimmers', 'animals', 'creatures', 'climbers', 'singers')
WEEKDAYS = ('Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday', 'Sunday')
MONTHS = ('January', 'February', 'March', 'April', 'May', 'June', 'July', 'August', 'September',
          'October', 'November', 'December')
